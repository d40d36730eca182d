"""``/projects/{project}``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from underlay.ui.auth import Caller
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)


@router.get("/projects/{project}")
def page(request: Request, caller: Caller, project: str) -> HTMLResponse:
    return render(request, "projects.html", caller)
