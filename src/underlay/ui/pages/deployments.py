"""``/deployments``: a project's deployments; ``/deployments/{project}/{name}``: traffic split,
replicas, canary state, this server's request, error, latency and batch-size figures, and
drift per feature from the stored drift reports (data: :mod:`underlay.ui.views_data`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from markupsafe import Markup

from underlay.api.deps import client_address
from underlay.identity import Action
from underlay.serving.dataplane import dataplane_of
from underlay.ui import charts, views_data, views_ml
from underlay.ui.auth import Caller, Form, PlatformDep
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)

MAX_HISTOGRAMS = 6
"""Features of the latest drift check drawn as distributions (drifted ones first)."""


@router.get("/deployments")
def list_deployments(
    request: Request,
    caller: Caller,
    platform: PlatformDep,
    chosen: views_ml.ChosenProject,
) -> HTMLResponse:
    found = views_data.list_deployments(platform, caller.actor, chosen) if chosen else []
    return render(request, "deployments.html", caller, project=chosen, deployments=found)


@router.get("/deployments/{project}/{name}")
def read_deployment(
    request: Request, caller: Caller, platform: PlatformDep, project: str, name: str
) -> HTMLResponse:
    found = views_data.read_deployment(
        platform, dataplane_of(request), caller.actor, project[:63], name[:63]
    )
    return render(
        request,
        "deployment.html",
        caller,
        project=project,
        found=found,
        figures=_figures(found),
        can_write=caller.can(Action.write, project),
    )


@router.post("/deployments/{project}/{name}/canary/{verb}")
def change_canary(
    request: Request,
    caller: Caller,
    platform: PlatformDep,
    form: Form,
    project: str,
    name: str,
    verb: str,
) -> RedirectResponse:
    """Promote or roll back the canary (members), then reconcile at once as the API does."""
    reason = str(form.get("reason", "")).strip()
    views_data.change_canary(
        platform, caller.actor, project[:63], name[:63], verb, reason, client_address(request)
    )
    platform.wake_scheduler()
    request.app.state.serving.wake()
    dataplane_of(request).forget(project, name)
    return RedirectResponse(f"/deployments/{project}/{name}", status_code=303)


def _figures(found: views_data.DeploymentView) -> dict[str, Markup]:
    stats = found.stats
    latency = stats.get("latency_ms", {})
    batches = stats.get("batches", {})
    bars = [(k, latency.get(k)) for k in ("mean", "p50", "p99")]
    rows = [("mean rows", batches.get("mean_rows")), ("p50 rows", batches.get("p50_rows"))]
    out = {
        "traffic": charts.bar_chart(
            [(f"{t.arm} v{t.version}", t.weight * 100) for t in found.deployment.traffic],
            title="traffic split",
            unit="%",
        ),
        "status": charts.bar_chart(
            [(f"HTTP {s}", float(n)) for s, n in stats.get("by_status", {}).items()],
            title="requests by status",
            unit="requests",
            width=420,
        ),
        "latency": charts.bar_chart(
            [(k, float(v)) for k, v in bars if v is not None], title="latency", unit="ms", width=420
        ),
        "batches": charts.bar_chart(
            [(k, float(v)) for k, v in rows if v is not None],
            title="batch sizes",
            width=420,
            unit="rows",
        ),
    }
    out.update(_drift(found.drift))
    return out


def _drift(reports: list[dict[str, Any]]) -> dict[str, Markup]:
    """The latest report's score per feature, and each feature's score over the reports."""
    if not reports:
        empty = charts.bar_chart([], title="drift per feature", unit="")
        return {"drift": empty, "histograms": Markup("")}
    latest = reports[0]
    scores = [
        (f"{f['name']}{' (drifted)' if f.get('drifted') else ''}", f["score"])
        for f in latest.get("features", [])
        if f.get("score") is not None
    ]
    series: dict[str, list[tuple[float, float]]] = {}
    for report in reversed(reports):
        when = _seconds(report.get("created_at"))
        for f in report.get("features", []):
            if when is not None and f.get("score") is not None:
                series.setdefault(str(f["name"]), []).append((when, float(f["score"])))
    features = sorted(latest.get("features", []), key=lambda f: not f.get("drifted"))
    histograms = [
        charts.grouped_bars(
            [str(label) for label in f["histogram"].get("labels", [])],
            {
                "reference": [100 * float(v) for v in f["histogram"].get("reference", [])],
                "current": [100 * float(v) for v in f["histogram"].get("current", [])],
            },
            title=f"{f['name']}: reference and current distribution",
            unit="%",
            width=420,
        )
        for f in features[:MAX_HISTOGRAMS]
        if isinstance(f.get("histogram"), dict)
    ]
    return {
        "histograms": Markup("").join(histograms),
        "drift": charts.bar_chart(scores, title="drift score per feature (latest check)", unit=""),
        "drift_over_time": charts.line_chart(
            series,
            title="drift score over time",
            x_label="check time (UTC)",
            y_label="score",
            x_time=True,
        ),
    }


def _seconds(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()
