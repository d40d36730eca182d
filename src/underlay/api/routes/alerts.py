"""Alerts for owners and admins: idle GPUs held by jobs, budgets nearly spent."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from underlay import identity
from underlay.api.deps import Ctx
from underlay.compute import alerts
from underlay.compute.schemas import AlertRead

router = APIRouter(prefix="/alerts", tags=["alerts"])


@router.get("", response_model=list[AlertRead])
def list_alerts(
    ctx: Ctx,
    project: Annotated[str | None, Query(max_length=64)] = None,
    resolved: bool = False,
) -> list[AlertRead]:
    """Open alerts of the caller's projects (all of them for a global admin), newest first."""
    with ctx.unit("alert.list", "alerts", project=project, audited=False) as u:
        project_id = None
        if project is not None:
            project_id = identity.read_project(u.session, project, ctx.actor).id
        rows = alerts.list_alerts(u.session, project_id=project_id, unresolved=not resolved)
        return [AlertRead.model_validate(a) for a in rows]


@router.post("/{alert_id}/resolve", response_model=AlertRead)
def resolve_alert(alert_id: Annotated[int, Path(ge=1, le=2**31 - 1)], ctx: Ctx) -> AlertRead:
    """Mark an alert resolved; needs the member role in its project (viewers may only read)."""
    with ctx.unit("alert.resolve", f"alert:{alert_id}") as u:
        alert = alerts.resolve_alert_by_id(u.session, alert_id, actor=ctx.actor)
        return AlertRead.model_validate(alert)
