"""Experiment tracking: experiments and runs of a project, their metrics and artifacts.

Another project's experiments and runs answer exactly as missing ones do (404).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import Field
from pydantic_core import to_json

from underlay import identity
from underlay.api.deps import Ctx
from underlay.api.fastjson import FastJSONRoute
from underlay.api.routes.blobs import stream_blob
from underlay.identity import Action
from underlay.ml import artifacts, experiments, metrics, runs
from underlay.ml.models import Experiment
from underlay.ml.schemas import (
    ArtifactCreate,
    ArtifactRead,
    ExperimentCreate,
    ExperimentRead,
    MetricHistory,
    RunComparison,
    RunCreate,
    RunEnd,
    RunEnvironment,
    RunInputs,
    RunLog,
    RunLogged,
    RunRead,
    RunStatus,
)
from underlay.platform import audit_text

RunId = Annotated[int, Path(ge=1, le=2**31 - 1)]
ExperimentName = Annotated[str, Path(max_length=63)]

experiments_router = APIRouter(prefix="/projects/{project}/experiments", tags=["experiments"])
# batches of metric points are long JSON arrays: parsed by pydantic-core (see api/fastjson.py)
router = APIRouter(prefix="/projects/{project}/runs", tags=["runs"], route_class=FastJSONRoute)


def _run(project: str, run_id: int | str) -> str:
    return f"project:{project}/run:{run_id}"


def _experiment_read(experiment: Experiment, count: int = 0) -> ExperimentRead:
    return ExperimentRead(
        id=experiment.id,
        name=experiment.name,
        description=experiment.description,
        created_at=experiment.created_at,
        runs=count,
    )


# -- experiments -----------------------------------------------------------------------------


@experiments_router.post("", response_model=ExperimentRead, status_code=201)
def create_experiment(project: str, body: ExperimentCreate, ctx: Ctx) -> ExperimentRead:
    resource = f"project:{project}/experiment:{body.name}"
    with ctx.unit("experiment.create", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        experiment = experiments.create(
            u.session, found.id, body.name, body.description, ctx.actor.user_id or None
        )
        return _experiment_read(experiment)


@experiments_router.get("", response_model=list[ExperimentRead])
def list_experiments(project: str, ctx: Ctx) -> list[ExperimentRead]:
    with ctx.unit("experiment.list", f"project:{project}/experiments", audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return [_experiment_read(e, n) for e, n in experiments.list_all(u.session, found.id)]


@experiments_router.get("/{name}", response_model=ExperimentRead)
def read_experiment(project: str, name: ExperimentName, ctx: Ctx) -> ExperimentRead:
    resource = f"project:{project}/experiment:{audit_text(name)}"
    with ctx.unit("experiment.read", resource, audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        experiment = experiments.get(u.session, found.id, name)
        counts = dict((e.id, n) for e, n in experiments.list_all(u.session, found.id))
        return _experiment_read(experiment, counts.get(experiment.id, 0))


# -- runs ------------------------------------------------------------------------------------


@router.post("", response_model=RunRead, status_code=201)
def create_run(project: str, body: RunCreate, ctx: Ctx) -> RunRead:
    """Start a run (its experiment is created on first use): params, tags, inputs, the job
    it runs in, its git commit and environment."""
    with ctx.unit("run.create", f"project:{project}/runs", project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        run = runs.create_run(u.session, found, body, ctx.actor.user_id or None)
        u.resource = _run(project, run.id)
        u.detail = {"experiment": body.experiment, "job_id": body.job_id}
        return runs.render(u.session, run, body.experiment)


@router.get("", response_model=list[RunRead])
def list_runs(
    project: str,
    ctx: Ctx,
    experiment: Annotated[str | None, Query(max_length=63)] = None,
    job_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    status: Annotated[RunStatus | None, Query()] = None,
    filter_expr: Annotated[str, Query(alias="filter", max_length=4000)] = "",
    order_by: Annotated[str, Query(max_length=1000)] = "",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """The project's runs, newest first; ``filter`` and ``order_by`` are search expressions
    (``metrics.acc > 0.9 and params.lr = '0.01'``, ``metrics.acc desc``; see docs/ml.md)."""
    with ctx.unit("run.list", f"project:{project}/runs", audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        search = runs.RunSearch(experiment, job_id, status, filter_expr, order_by, limit)
        body = to_json(runs.search_rows(u.session, found.id, search))
    # plain data straight to JSON: a search answers hundreds of runs (see runs.search_rows)
    return Response(body, media_type="application/json")


@router.get("/compare", response_model=RunComparison)
def compare_runs(
    project: str,
    ctx: Ctx,
    ids: Annotated[
        list[Annotated[int, Field(ge=1, le=2**31 - 1)]], Query(min_length=1, max_length=100)
    ],
) -> RunComparison:
    """Runs side by side: each param and metric (its latest value) of any of them."""
    with ctx.unit("run.read", f"project:{project}/runs", audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return runs.compare(u.session, found.id, ids)


@router.get("/{run_id}", response_model=RunRead)
def read_run(project: str, run_id: RunId, ctx: Ctx) -> RunRead:
    with ctx.unit("run.read", _run(project, run_id), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return runs.render(u.session, runs.read_run(u.session, found.id, run_id))


@router.get("/{run_id}/environment", response_model=RunEnvironment)
def read_environment(project: str, run_id: RunId, ctx: Ctx) -> RunEnvironment:
    """The ``pip freeze`` of the process that ran the run."""
    with ctx.unit("run.read", _run(project, run_id), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        run = runs.read_run(u.session, found.id, run_id)
        return RunEnvironment(run_id=run.id, environment=run.environment)


@router.post("/{run_id}/end", response_model=RunRead)
def end_run(project: str, run_id: RunId, body: RunEnd, ctx: Ctx) -> RunRead:
    """End a running run as finished, failed or killed (again with its status: a no-op)."""
    with ctx.unit("run.end", _run(project, run_id), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        run = runs.end_run(u.session, found.id, run_id, body)
        u.detail = {"status": run.status}
        return runs.render(u.session, run)


@router.post("/{run_id}/inputs", response_model=RunRead)
def add_inputs(project: str, run_id: RunId, body: RunInputs, ctx: Ctx) -> RunRead:
    """Record dataset/table versions the run read, each a lineage edge into the run."""
    with ctx.unit("run.inputs.add", _run(project, run_id), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        run = runs.read_run(u.session, found.id, run_id, lock=True)
        runs.add_inputs(u.session, run, body.inputs)
        u.detail = {"inputs": [f"{i.kind}:{i.name}@{i.version}" for i in body.inputs]}
        return runs.render(u.session, run)


@router.delete("/{run_id}", status_code=204)
def delete_run(project: str, run_id: RunId, ctx: Ctx) -> Response:
    """Delete a run with its metrics and artifacts; blobs nothing else holds go too."""
    with ctx.unit("run.delete", _run(project, run_id), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        removed = runs.delete_run(u.session, ctx.platform.blobs, found.id, run_id)
        u.detail = {"blobs_removed": removed}
    return Response(status_code=204)


@router.post("/{run_id}/log", response_model=RunLogged)
def log_batch(project: str, run_id: RunId, body: RunLog, ctx: Ctx) -> RunLogged:
    """Write a batch of params, tags and metric points (in columns) exactly once: a batch id
    written before answers ``duplicate: true`` and writes nothing."""
    with ctx.unit("run.log", _run(project, run_id), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        logged = metrics.log_batch(u.session, found.id, run_id, body)
        u.detail = {"batch": body.batch_id, "points": logged.points, "dup": logged.duplicate}
        return logged


@router.get(
    "/{run_id}/metrics/{key:path}",
    response_model=MetricHistory,
    responses={200: {"content": {metrics.ARROW_STREAM: {}}}},
)
def metric_history(
    project: str,
    run_id: RunId,
    key: Annotated[str, Path(max_length=250)],
    ctx: Ctx,
    request: Request,
    max_points: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
) -> Response:
    """The points of one metric in step order, in columns; ``max_points`` downsamples evenly
    (first and last point kept). With ``Accept: application/vnd.apache.arrow.stream``, an
    Arrow IPC stream of the same columns."""
    with ctx.unit("run.read", _run(project, run_id), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        found_history = metrics.read_history(u.session, found.id, run_id, key, max_points)
    if metrics.ARROW_STREAM in request.headers.get("accept", ""):
        return Response(found_history.arrow(), media_type=metrics.ARROW_STREAM)
    return Response(found_history.model().model_dump_json(), media_type="application/json")


# -- artifacts -------------------------------------------------------------------------------


@router.post("/{run_id}/artifacts", response_model=ArtifactRead, status_code=201)
def create_artifact(
    project: str, run_id: RunId, body: ArtifactCreate, ctx: Ctx, response: Response
) -> ArtifactRead:
    """Record an uploaded blob as a file of the run (the same path and bytes again: 200)."""
    with ctx.unit("run.artifact.create", _run(project, run_id), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        artifact, created = artifacts.add_artifact(u.session, found.id, run_id, body)
        u.resource = f"{_run(project, run_id)}/artifact:{audit_text(body.path, 256)}"
        u.detail = {"digest": body.digest, "size": body.size, "new": created}
        if not created:
            response.status_code = 200
        return ArtifactRead.model_validate(artifact)


@router.get("/{run_id}/artifacts", response_model=list[ArtifactRead])
def list_artifacts(
    project: str,
    run_id: RunId,
    ctx: Ctx,
    prefix: Annotated[str, Query(max_length=1024, pattern=r"^[^\x00]*$")] = "",
) -> list[ArtifactRead]:
    with ctx.unit("run.read", _run(project, run_id), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        rows = artifacts.list_artifacts(u.session, found.id, run_id, prefix)
        return [ArtifactRead.model_validate(a) for a in rows]


@router.get(
    "/{run_id}/artifacts/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_artifact(
    project: str,
    run_id: RunId,
    ctx: Ctx,
    path: Annotated[str, Query(min_length=1, max_length=1024, pattern=r"^[^\x00]*$")],
) -> StreamingResponse:
    """An artifact's bytes, decrypted and verified while streaming; an audited read."""
    resource = f"{_run(project, run_id)}/artifact:{audit_text(path, 256)}"
    with ctx.unit("run.artifact.read", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        artifact = artifacts.read_artifact(u.session, found.id, run_id, path)
        return stream_blob(
            ctx.platform.blobs, u.session, found.id, artifact.digest, artifact.media_type
        )
