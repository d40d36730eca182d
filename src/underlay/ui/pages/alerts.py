"""``/alerts``: open (or resolved) alerts of the caller's projects, paged; a member resolves
one with a form, through the same service and audited unit as ``POST /api/v1/alerts/{id}/
resolve``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from underlay import identity
from underlay.api.deps import client_address
from underlay.compute import alerts
from underlay.compute.schemas import AlertRead
from underlay.identity import Action
from underlay.store.models import Project
from underlay.ui.auth import Caller, Form, PlatformDep
from underlay.ui.pagination import PER_PAGE, paginate
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)
AlertId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.get("/alerts")
def list_alerts(
    request: Request,
    caller: Caller,
    platform: PlatformDep,
    project: Annotated[str, Query(max_length=64)] = "",
    resolved: bool = False,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    with platform.db.session(caller.actor.scope) as session:
        project_id = identity.read_project(session, project, caller.actor).id if project else None
        unresolved = not resolved
        total = alerts.count_alerts(session, project_id=project_id, unresolved=unresolved)
        rows = alerts.list_alerts(
            session,
            project_id=project_id,
            unresolved=unresolved,
            limit=PER_PAGE,
            offset=(page - 1) * PER_PAGE,
        )
        ids = sorted({a.project_id for a in rows if a.project_id is not None})
        found = session.execute(select(Project.id, Project.name).where(Project.id.in_(ids)))
        names: dict[int, str] = {pid: name for pid, name in found}
        items = [(AlertRead.model_validate(a), names.get(a.project_id or 0)) for a in rows]
    writable = {p.name for p in caller.projects if caller.can(Action.write, p.name)}
    return render(
        request,
        "alerts.html",
        caller,
        page=paginate(items, total=total, page=page, url=request.url),
        project=project,
        resolved=resolved,
        writable=writable,
    )


@router.post("/alerts/{alert_id}/resolve")
def resolve_alert(
    request: Request, alert_id: AlertId, caller: Caller, form: Form, platform: PlatformDep
) -> Response:
    client = client_address(request)
    with platform.unit(caller.actor, "alert.resolve", f"alert:{alert_id}", client=client) as u:
        alerts.resolve_alert_by_id(u.session, alert_id, actor=caller.actor)
    return RedirectResponse("/alerts", status_code=303)
