"""The dashboard's pages: each module has ``router = APIRouter(include_in_schema=False)``."""

from __future__ import annotations

from fastapi import APIRouter

from underlay.ui.pages import alerts, audit, jobs, login, nodes, overview, projects

ROUTERS: list[APIRouter] = [
    login.router,
    overview.router,
    nodes.router,
    jobs.router,
    projects.router,
    alerts.router,
    audit.router,
    # ui-ml pages below
]
