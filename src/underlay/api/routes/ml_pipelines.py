"""ML pipeline runs of a project and their step calls: the records drivers and step jobs
report (the server runs no step; see underlay.ml.pipelines.service)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from underlay import identity
from underlay.api.deps import Ctx
from underlay.identity import Action
from underlay.ml.pipelines import service
from underlay.ml.pipelines.schemas import (
    RunCreate,
    RunFinish,
    RunRead,
    StepCreate,
    StepFinish,
    StepRead,
    StepStart,
)

RunId = Annotated[int, Path(ge=1, le=2**31 - 1)]
Key = Annotated[str, Path(pattern=r"^[a-z_][a-z0-9_]{0,39}(\.[0-9]{1,3})?$")]

router = APIRouter(prefix="/projects/{project}/ml-pipeline-runs", tags=["pipelines"])


@router.post("", response_model=RunRead, status_code=201)
def create_run(project: str, body: RunCreate, ctx: Ctx) -> RunRead:
    """Record the start of a run of an ML pipeline."""
    with ctx.unit(
        "ml_pipeline.run.create", f"project:{project}/ml-pipeline:{body.pipeline}", project=project
    ) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        run = service.create_run(u.session, found, body, ctx.actor.user_id or None)
        u.resource = f"project:{project}/ml-pipeline:{body.pipeline}/run:{run.id}"
        u.detail = {"mode": body.mode}
        return service.render_run(u.session, run, ctx.platform.signer.public_key_bytes())


@router.get("", response_model=list[RunRead])
def list_runs(
    project: str,
    ctx: Ctx,
    pipeline: Annotated[str | None, Query(max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RunRead]:
    """The project's runs, newest first (without their steps)."""
    with ctx.unit(
        "ml_pipeline.run.list",
        f"project:{project}/ml-pipeline-runs",
        audited=False,
        project=project,
    ) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        key = ctx.platform.signer.public_key_bytes()
        runs = service.list_runs(u.session, found, pipeline, limit)
        return [service.render_run(u.session, run, key, steps=False) for run in runs]


@router.get("/{run_id}", response_model=RunRead)
def read_run(project: str, run_id: RunId, ctx: Ctx) -> RunRead:
    """A run with every step call: status, cache hits, jobs, outputs, metrics, sweeps."""
    resource = f"project:{project}/ml-pipeline-run:{run_id}"
    with ctx.unit("ml_pipeline.run.read", resource, audited=False, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        run = service.read_run(u.session, found, run_id)
        return service.render_run(u.session, run, ctx.platform.signer.public_key_bytes())


@router.post("/{run_id}/finish", response_model=RunRead)
def finish_run(project: str, run_id: RunId, body: RunFinish, ctx: Ctx) -> RunRead:
    """Record the end of a run, with its sweeps' trials and best picks."""
    with ctx.unit(
        "ml_pipeline.run.finish", f"project:{project}/ml-pipeline-run:{run_id}", project=project
    ) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        run = service.finish_run(u.session, found, run_id, body)
        u.detail = {"status": run.status, "error": run.error[:500]}
        return service.render_run(u.session, run, ctx.platform.signer.public_key_bytes())


@router.post("/{run_id}/steps", response_model=StepRead, status_code=201)
def create_step(project: str, run_id: RunId, body: StepCreate, ctx: Ctx) -> StepRead:
    """Record a step call; it comes back ``cached`` when an identical call ran before."""
    resource = f"project:{project}/ml-pipeline-run:{run_id}/step:{body.key}"
    with ctx.unit("ml_pipeline.step.create", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        step = service.create_step(u.session, found, run_id, body)
        u.detail = {"status": step.status, "cache_key": step.cache_key}
        return service.render_step(u.session, step)


@router.get("/{run_id}/steps/{key}", response_model=StepRead)
def read_step(project: str, run_id: RunId, key: Key, ctx: Ctx) -> StepRead:
    resource = f"project:{project}/ml-pipeline-run:{run_id}/step:{key}"
    with ctx.unit("ml_pipeline.step.read", resource, audited=False, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return service.render_step(u.session, service.read_step(u.session, found, run_id, key))


@router.post("/{run_id}/steps/{key}/start", response_model=StepRead)
def start_step(project: str, run_id: RunId, key: Key, body: StepStart, ctx: Ctx) -> StepRead:
    resource = f"project:{project}/ml-pipeline-run:{run_id}/step:{key}"
    with ctx.unit("ml_pipeline.step.start", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        step = service.start_step(u.session, found, run_id, key, body)
        u.detail = {"job_id": step.job_id}
        return service.render_step(u.session, step)


@router.post("/{run_id}/steps/{key}/finish", response_model=StepRead)
def finish_step(project: str, run_id: RunId, key: Key, body: StepFinish, ctx: Ctx) -> StepRead:
    """Record a step call's outputs (a pickle is signed here) and lineage, or its error."""
    resource = f"project:{project}/ml-pipeline-run:{run_id}/step:{key}"
    with ctx.unit("ml_pipeline.step.finish", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        sign = ctx.platform.signer.sign
        step = service.finish_step(u.session, found, run_id, key, body, sign)
        u.detail = {"status": step.status, "outputs": sorted(body.outputs)}
        return service.render_step(u.session, step)
