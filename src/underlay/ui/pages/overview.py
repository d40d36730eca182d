"""``/``: the platform at a glance — the fleet now and over the last hours (utilisation,
power, temperature, queue depth), the caller's running jobs, this month's spend and energy,
open alerts. ``/overview/live`` is the part that refreshes itself every few seconds."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup
from sqlalchemy.orm import Session

from underlay.compute import alerts, jobs, ledger
from underlay.compute.budgets import month_start
from underlay.compute.schemas import AlertRead
from underlay.compute.states import JobState
from underlay.platform import Platform
from underlay.store.types import utcnow
from underlay.ui.auth import Caller, PlatformDep, UiCaller
from underlay.ui.charts import line_chart
from underlay.ui.history import FleetHistory, Sample
from underlay.ui.pages.nodes import fleet, fleet_totals
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)
CHART_WINDOW_S = 6 * 3600


def over_time(
    series: dict[str, list[tuple[float, float]]], title: str, unit: str, x_label: str
) -> Markup:
    """A line chart whose x axis is time (Unix seconds, drawn as UTC)."""
    return line_chart(series, title=title, x_label=x_label, y_label=unit, x_time=True)


def fleet_charts(samples: list[Sample]) -> dict[str, Markup]:
    """Utilisation, power and queue depth over the sampled window, as SVG."""

    def series(pick: Any, scale: float = 1.0) -> list[tuple[float, float]]:
        return [(s.at, pick(s) * scale) for s in samples if pick(s) is not None]

    now = "time (UTC)"
    return {
        "utilization": over_time(
            {
                "accelerators": series(lambda s: s.utilization, 100),
                "CPU": series(lambda s: s.cpu_utilization, 100),
            },
            "Utilisation over time",
            "%",
            now,
        ),
        "power": over_time(
            {"accelerator power": series(lambda s: s.power_watts)},
            "Accelerator power over time",
            "W",
            now,
        ),
        "queue": over_time(
            {"queued": series(lambda s: s.queued), "running": series(lambda s: s.running)},
            "Queue depth over time",
            "jobs",
            now,
        ),
    }


def _live(session: Session, caller: UiCaller, platform: Platform) -> dict[str, Any]:
    found = fleet(session)
    running = jobs.list_jobs(session, states=[str(JobState.running)], limit=10)
    month = ledger.usage_summary(session, since=month_start(utcnow()))
    open_alerts = alerts.list_alerts(session, limit=5)
    return {
        "fleet": found,
        "totals": fleet_totals(found),
        "queued": jobs.count_jobs(session, states=[str(JobState.queued)]),
        "running_count": jobs.count_jobs(session, states=[str(JobState.running)]),
        "running": [jobs.render(session, j) for j in running],
        "month": month[0] if month else None,
        "currency": platform.settings.compute.currency,
        "alerts": [AlertRead.model_validate(a) for a in open_alerts],
        "alert_count": alerts.count_alerts(session),
    }


def _history(request: Request) -> FleetHistory:
    history: FleetHistory = request.app.state.fleet_history
    return history


@router.get("/")
def overview(request: Request, caller: Caller, platform: PlatformDep) -> HTMLResponse:
    with platform.db.session(caller.actor.scope) as session:
        live = _live(session, caller, platform)
    charts = fleet_charts(_history(request).samples(CHART_WINDOW_S))
    return render(request, "overview.html", caller, charts=charts, **live)


@router.get("/overview/live")
def overview_live(request: Request, caller: Caller, platform: PlatformDep) -> HTMLResponse:
    """The self-refreshing part of the overview (an HTML fragment)."""
    with platform.db.session(caller.actor.scope) as session:
        live = _live(session, caller, platform)
    return render(request, "_overview_live.html", caller, **live)
