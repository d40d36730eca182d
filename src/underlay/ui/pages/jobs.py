"""``/jobs``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from underlay.ui.auth import Caller
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)


@router.get("/jobs")
def page(request: Request, caller: Caller) -> HTMLResponse:
    return render(request, "jobs.html", caller)
