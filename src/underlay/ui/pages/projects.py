"""``/projects/{project}``: members, quotas, this month's use against the budget, and spend,
energy and carbon per day over the last 30 days. Another project answers 404, as the API."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup
from sqlalchemy import func, select

from underlay import identity
from underlay.compute import budgets, jobs, ledger, quotas
from underlay.compute.models import Job
from underlay.compute.schemas import QuotaRead
from underlay.compute.states import ACTIVE
from underlay.store.types import utcnow
from underlay.ui.auth import Caller, PlatformDep
from underlay.ui.charts import bar_chart
from underlay.ui.pages.overview import over_time
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)
DAYS = 30
ProjectName = Annotated[str, Path(max_length=64)]


def usage_charts(days: list[ledger.DayUsage], currency: str) -> dict[str, Markup]:
    def series(pick: Any) -> list[tuple[float, float]]:
        return [
            (dt.datetime.combine(d.day, dt.time(), dt.UTC).timestamp(), float(pick(d)))
            for d in days
        ]

    day = "day (UTC)"
    return {
        "spend": over_time(
            {"spend": series(lambda d: d.cost)}, f"Spend per day ({currency})", currency, day
        ),
        "energy": over_time(
            {"energy": series(lambda d: d.energy_kwh)}, "Energy per day (kWh)", "kWh", day
        ),
        "carbon": over_time(
            {"carbon": series(lambda d: d.carbon_kg)}, "Carbon per day (kg CO2e)", "kg", day
        ),
    }


@router.get("/projects/{project}")
def show_project(
    request: Request, project: ProjectName, caller: Caller, platform: PlatformDep
) -> HTMLResponse:
    now = utcnow()
    settings = platform.settings
    with platform.db.session(caller.actor.scope) as session:
        found = identity.read_project(session, project, caller.actor)
        members = identity.list_members(session, found)
        quota_rows = [QuotaRead.model_validate(q) for q in quotas.list_quotas(session, found)]
        budget = budgets.budget_status(session, found.id, now, settings)
        since = budgets.month_start(now)
        by_user = ledger.usage_summary(session, project_id=found.id, since=since, group_by="user")
        month = ledger.usage_summary(session, project_id=found.id, since=since)[0]
        start = (now - dt.timedelta(days=DAYS - 1)).replace(hour=0, minute=0, second=0)
        days = ledger.usage_by_day(session, found.id, since=start, until=now)
        held = session.execute(
            select(func.coalesce(func.sum(Job.gpus * Job.gang), 0), func.count(Job.id)).where(
                Job.project_id == found.id, Job.state.in_([str(s) for s in ACTIVE])
            )
        ).one()
        queued = jobs.count_jobs(session, project=found, states=["queued"])
    currency = settings.compute.currency
    charts = usage_charts(days, currency)
    charts["by_user"] = bar_chart(
        [(row.key or "—", row.cost) for row in by_user],
        title=f"Spend this month by user ({currency})",
        unit=currency,
    )
    return render(
        request,
        "project.html",
        caller,
        project=found,
        role=(caller.project(found.name) or None),
        members=[{"name": u.name, "role": m.role, "since": m.created_at} for m, u in members],
        quotas=quota_rows,
        budget=budget,
        month=month,
        currency=currency,
        charts=charts,
        gpus_held=int(held[0]),
        active_jobs=int(held[1]),
        queued=queued,
        days=DAYS,
    )
