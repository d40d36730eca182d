"""Liveness and readiness; the only routes that need no token."""

from __future__ import annotations

from fastapi import APIRouter

from underlay import __version__
from underlay.api.deps import PlatformDep
from underlay.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness probe")
def healthz() -> Health:
    """Liveness: 200 with the server version while the process serves HTTP. Needs no token;
    also served at ``/healthz`` (outside ``/api/v1``) for load balancers and orchestrators."""
    return Health(status="ok", version=__version__)


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness probe",
    responses={503: {"description": "Not ready: the database cannot be reached"}},
)
def readyz(platform: PlatformDep) -> Health:
    """Readiness: 200 when the database answers, else a 503 problem. Needs no token; also
    served at ``/readyz`` (outside ``/api/v1``)."""
    platform.db.ping()
    return Health(status="ready", version=__version__, checks={"database": "ok"})
