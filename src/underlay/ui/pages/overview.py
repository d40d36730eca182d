"""``/``: the platform at a glance."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from underlay.compute import nodes
from underlay.ui.auth import Caller, PlatformDep
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)


@router.get("/")
def overview(request: Request, caller: Caller, platform: PlatformDep) -> HTMLResponse:
    with platform.db.session(caller.actor.scope) as session:
        fleet = [nodes.node_detail(n, a) for n, a in nodes.list_nodes(session)]
    return render(request, "overview.html", caller, fleet=fleet)
