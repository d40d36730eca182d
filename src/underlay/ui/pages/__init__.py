"""The dashboard's pages: each module has ``router = APIRouter(include_in_schema=False)``."""

from __future__ import annotations

from fastapi import APIRouter

from underlay.ui.pages import (
    alerts,
    audit,
    datasets,
    deployments,
    jobs,
    login,
    models,
    nodes,
    overview,
    projects,
    runs,
    simulate,
)

ROUTERS: list[APIRouter] = [
    login.router,
    overview.router,
    nodes.router,
    jobs.router,
    projects.router,
    alerts.router,
    audit.router,
    # ui-ml pages below
    runs.router,
    models.router,
    datasets.router,
    deployments.router,
    simulate.router,
]
