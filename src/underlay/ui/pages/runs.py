"""``/runs``: a project's runs with search and order, one run's metric curves, and
``/runs/compare`` for two or more runs side by side (data: :mod:`underlay.ui.views_ml`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse

from underlay.errors import InvalidInput
from underlay.ui import charts, views_ml
from underlay.ui.auth import Caller, PlatformDep
from underlay.ui.pagination import clamp_page, paginate
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)

RunId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.get("/runs")
def list_runs(
    request: Request,
    caller: Caller,
    platform: PlatformDep,
    chosen: views_ml.ChosenProject,
    q: Annotated[str, Query(max_length=4000)] = "",
    order: Annotated[str, Query(max_length=1000)] = "",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    ctx: dict[str, Any] = {"project": chosen, "q": q, "order": order, "error": None}
    if chosen is None:
        return render(request, "runs.html", caller, listing=None, chart=None, **ctx)
    try:
        found = views_ml.list_runs(
            platform, caller.actor, chosen, filter_expr=q, order_by=order, page=clamp_page(page)
        )
    except InvalidInput as exc:  # a bad search: the form again, with what is wrong
        ctx["error"] = exc.message
        return render(
            request, "runs.html", caller, status_code=400, listing=None, chart=None, **ctx
        )
    listing = paginate(found.rows, total=found.total, page=found.page, url=request.url)
    return render(
        request, "runs.html", caller, listing=listing, found=found, chart=_bars(found), **ctx
    )


def _bars(found: views_ml.RunList) -> object:
    """The first metric's latest value of each run on the page."""
    if not found.metric_keys:
        return None
    key = found.metric_keys[0]
    bars = [
        (f"#{r['id']} {r['name']}", r["metrics"][key]["value"])
        for r in found.rows
        if key in r["metrics"]
    ]
    return charts.bar_chart(bars, title=f"latest {key} per run", unit="")


@router.get("/runs/compare")
def compare_runs(
    request: Request,
    caller: Caller,
    platform: PlatformDep,
    ids: Annotated[list[str], Query(max_length=20)],
    chosen: views_ml.ChosenProject,
) -> HTMLResponse:
    if chosen is None:
        raise InvalidInput("pick a project: you belong to none")
    wanted = views_ml.parse_ids(" ".join(i[:400] for i in ids))
    found = views_ml.compare_runs(platform, caller.actor, chosen, wanted)
    lines = {
        key: charts.line_chart(series, title=key, x_label="step", y_label=key)
        for key, series in found.charts.items()
    }
    return render(request, "runs_compare.html", caller, project=chosen, found=found, lines=lines)


@router.get("/runs/{project}/{run_id}")
def read_run(
    request: Request, caller: Caller, platform: PlatformDep, project: str, run_id: RunId
) -> HTMLResponse:
    found = views_ml.read_run(platform, caller.actor, project[:63], run_id)
    lines = {
        key: charts.line_chart({key: points}, title=key, x_label="step", y_label=key)
        for key, points in found.histories.items()
    }
    return render(request, "run.html", caller, project=project, found=found, lines=lines)
