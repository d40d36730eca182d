"""The server's status for ``underlay status``: any signed-in user; kinds, never URLs."""

from __future__ import annotations

from fastapi import APIRouter

from underlay.api.deps import Ctx
from underlay.identity import Action, authorize
from underlay.schemas import StatusRead
from underlay.status import read_status

router = APIRouter(prefix="/status", tags=["status"])


@router.get("", response_model=StatusRead)
def get_status(ctx: Ctx) -> StatusRead:
    """Version, database and blob store kinds, nodes, and the caller's visible queue."""
    with ctx.unit("status.read", "status", audited=False) as u:
        authorize(ctx.actor, Action.read)
        return read_status(u.session, ctx.platform.settings)
