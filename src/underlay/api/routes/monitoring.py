"""Monitoring of a deployment: drift checks against its reference and their stored reports
(:mod:`underlay.monitoring.checks`), and its performance from feedback
(:mod:`underlay.monitoring.performance`) with the serving counters of this process.

Another project's deployments answer exactly as missing ones do (the project lookup refuses
first)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request

from underlay import identity
from underlay.api.deps import Ctx
from underlay.api.routes.tables import Tables
from underlay.monitoring import checks, performance, reports
from underlay.monitoring.schemas import DriftCheckCreate
from underlay.platform import audit_text
from underlay.serving import service
from underlay.serving.dataplane import dataplane_of

router = APIRouter(prefix="/projects/{project}/deployments", tags=["monitoring"])

DeploymentName = Annotated[str, Path(max_length=63)]
ReportId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _resource(project: str, name: str) -> str:
    return f"project:{project}/deployment:{audit_text(name)}"


@router.post("/{name}/drift")
def check_drift(
    project: str, name: DeploymentName, body: DriftCheckCreate, ctx: Ctx, store: Tables
) -> dict[str, Any]:
    """Compare a window of the deployment's prediction log with its reference (the training
    table version found through lineage, or ``reference``); stored unless ``store`` is false."""
    check = checks.check_drift(
        ctx.platform.db,
        ctx.platform,
        project,
        name,
        window=body.window(),
        options=body.options(),
        actor=ctx.actor,
        store=body.store,
        reference=body.reference,
        target=body.target,
        tables=store,
    )
    return check.to_dict()


@router.get("/{name}/drift")
def list_drift_reports(
    project: str,
    name: DeploymentName,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    """The deployment's stored drift reports, newest first."""
    with ctx.unit("deployment.drift.list", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return checks.list_drift_reports(u.session, found.id, name, limit=limit)


@router.get("/{name}/drift/{report}")
def read_drift_report(
    project: str, name: DeploymentName, report: ReportId, ctx: Ctx
) -> dict[str, Any]:
    """One stored drift report."""
    with ctx.unit("deployment.drift.read", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return checks.read_drift_report(u.session, found.id, name, report)


@router.get("/{name}/performance")
def deployment_performance(
    project: str,
    name: DeploymentName,
    ctx: Ctx,
    store: Tables,
    request: Request,
    task: Literal["classification", "regression"] = "classification",
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    window_s: Annotated[float | None, Query(gt=0)] = None,
    slice_by: Annotated[str | None, Query(max_length=128)] = None,
    prediction: Annotated[str | None, Query(max_length=128)] = None,
    score: Annotated[str | None, Query(max_length=128)] = None,
    min_rows: Annotated[int, Query(ge=1, le=1_000_000)] = performance.DEFAULT_MIN_ROWS,
) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, AUC and calibration (classifiers) or RMSE and MAE
    (regressors) from the labels sent as feedback, overall, per window and per slice; with
    this server process's request, error and latency counters of the deployment."""
    with ctx.unit("deployment.performance", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        deployment_id = service.get_deployment(u.session, found.id, name).id
        report = performance.deployment_performance(
            u.session,
            store,
            found.id,
            name,
            task,
            since=None if since is None else _seconds(since),
            until=None if until is None else _seconds(until),
            window_s=window_s,
            slice_by=slice_by,
            prediction=prediction,
            score=score,
            min_rows=min_rows,
        )
    counters = dataplane_of(request).guards.snapshot(deployment_id)
    return {"deployment": name, **report.to_dict(), "serving": reports.serving_figures(counters)}


def _seconds(moment: dt.datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()
