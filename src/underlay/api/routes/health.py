"""Liveness and readiness; the only routes that need no token."""

from __future__ import annotations

from fastapi import APIRouter

from underlay import __version__
from underlay.api.deps import PlatformDep
from underlay.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok", version=__version__)


@router.get("/readyz", response_model=Health, responses={503: {"description": "Not ready"}})
def readyz(platform: PlatformDep) -> Health:
    platform.db.ping()
    return Health(status="ready", version=__version__, checks={"database": "ok"})
