"""``/simulate``: replay a built-in trace through the chosen scheduling policies and chart them
side by side (data: :mod:`underlay.ui.views_sim`; the form is a GET, so a result is a link)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from underlay.errors import InvalidInput
from underlay.ui import charts, views_sim
from underlay.ui.auth import Caller
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)

MEASURES = (
    ("avg_jct_s", "average job completion time", "s"),
    ("avg_queue_s", "average queueing delay", "s"),
    ("gpu_utilization", "GPU utilisation", "%"),
    ("makespan_s", "makespan", "s"),
    ("jain_fairness", "Jain's fairness between projects", ""),
    ("preemptions", "preemptions", ""),
)


@router.get("/simulate")
def simulate(
    request: Request,
    caller: Caller,
    trace: Annotated[str, Query(max_length=32)] = "",
    cluster: Annotated[str, Query(max_length=200)] = "",
    policies: Annotated[list[str] | None, Query(max_length=8)] = None,
    jobs: Annotated[int, Query(ge=1, le=views_sim.MAX_JOBS)] = views_sim.DEFAULT_JOBS,
) -> HTMLResponse:
    from underlay.compute.scheduler import POLICIES

    chosen = policies or ["fifo", "default"]
    form = {"trace": trace or "philly", "cluster": cluster, "policies": chosen, "jobs": jobs}
    ctx: dict[str, Any] = {"form": form, "all_policies": list(POLICIES), "traces": views_sim.TRACES}
    ctx |= {"result": None, "error": None, "figures": {}, "defaults": views_sim.DEFAULT_CLUSTER}
    if not trace:  # the form alone
        return render(request, "simulate.html", caller, **ctx)
    try:
        result = views_sim.replay(trace, cluster or None, chosen, jobs)
    except InvalidInput as exc:
        ctx["error"] = exc.message
        return render(request, "simulate.html", caller, status_code=400, **ctx)
    ctx["result"], ctx["figures"] = result, _figures(result)
    return render(request, "simulate.html", caller, **ctx)


def _figures(result: views_sim.Replay) -> dict[str, Markup]:
    out = {
        "ended": charts.line_chart(
            result.curves,
            title="jobs ended over simulated time",
            x_label="simulated hours since the first arrival",
            y_label="jobs ended",
        )
    }
    for key, label, unit in MEASURES:
        scale = 100.0 if unit == "%" else 1.0
        bars = [
            (r["policy"], float(r[key]) * scale) for r in result.reports if r.get(key) is not None
        ]
        out[key] = charts.bar_chart(bars, title=label, unit=unit, width=420)
    return out
