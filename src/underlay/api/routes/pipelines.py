"""Pipeline runs of a project: the records their runners report (the server runs no pipeline;
see underlay.data.pipeline_runs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy.orm import Session

from underlay import identity
from underlay.api.deps import Ctx
from underlay.data import pipeline_runs as runs
from underlay.data.models import PipelineRun
from underlay.data.schemas import PipelineRunCreate, PipelineRunFinish, PipelineRunRead
from underlay.identity import SYSTEM, Action
from underlay.store.models import Project

RunId = Annotated[int, Path(ge=1, le=2**31 - 1)]

router = APIRouter(prefix="/projects/{project}/pipeline-runs", tags=["pipelines"])


@router.post("", response_model=PipelineRunRead, status_code=201)
def create_run(project: str, body: PipelineRunCreate, ctx: Ctx) -> PipelineRunRead:
    """Record the start of a run: its pinned input versions, its output table, its job."""
    with ctx.unit("pipeline.run.create", f"project:{project}/pipeline:{body.pipeline}") as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        run = runs.create_run(u.session, found, body, ctx.actor.user_id or None)
        u.resource = f"project:{project}/pipeline:{body.pipeline}/run:{run.id}"
        u.detail = {"inputs": [f"{i.table}@{i.version}" for i in body.inputs]}
        return runs.render(u.session, run, _lease_s(ctx))


@router.post("/{run_id}/finish", response_model=PipelineRunRead)
def finish_run(project: str, run_id: RunId, body: PipelineRunFinish, ctx: Ctx) -> PipelineRunRead:
    """Record the end of a run; a success adds lineage from each input to the output version."""
    with ctx.unit("pipeline.run.finish", f"project:{project}/pipeline-run:{run_id}") as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        run = runs.finish_run(u.session, found, run_id, body, _lease_s(ctx))
        u.resource = f"project:{project}/pipeline:{run.pipeline}/run:{run.id}"
        u.detail = {"status": run.status, "output_version": run.output_version}
        if run.error:
            u.detail["error"] = run.error[:500]
        return runs.render(u.session, run)


@router.get("", response_model=list[PipelineRunRead])
def list_runs(
    project: str,
    ctx: Ctx,
    pipeline: Annotated[str | None, Query(max_length=63)] = None,
    job_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[PipelineRunRead]:
    """The project's runs, newest first."""
    with ctx.unit("pipeline.run.list", f"project:{project}/pipeline-runs", audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        _settle(ctx, u.session, found)
        found_runs = runs.list_runs(u.session, found, pipeline, job_id, limit)
        return [runs.render(u.session, run, _lease_s(ctx)) for run in found_runs]


@router.get("/{run_id}", response_model=PipelineRunRead)
def read_run(project: str, run_id: RunId, ctx: Ctx) -> PipelineRunRead:
    with ctx.unit(
        "pipeline.run.read", f"project:{project}/pipeline-run:{run_id}", audited=False
    ) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        run = runs.read_run(u.session, found, run_id)
        _settle(ctx, u.session, found, [run])
        return runs.render(u.session, run, _lease_s(ctx))


@router.post("/{run_id}/lease", response_model=PipelineRunRead)
def renew_lease(project: str, run_id: RunId, ctx: Ctx) -> PipelineRunRead:
    """The runner renews its run's lease (not audited: a renewal changes no outcome); 409 once
    the run has ended, the runner's cue to stop."""
    resource = f"project:{project}/pipeline-run:{run_id}"
    with ctx.unit("pipeline.run.lease", resource, project=project, audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        run = runs.renew_lease(u.session, found, run_id, _lease_s(ctx))
        return runs.render(u.session, run, _lease_s(ctx))


def _lease_s(ctx: Ctx) -> float:
    return ctx.platform.settings.data.pipeline_run_lease_s


def _settle(
    ctx: Ctx, session: Session, project: Project, candidates: list[PipelineRun] | None = None
) -> None:
    """Settle the runs whose runner is gone (see underlay.data.pipeline_runs), each audited."""
    for run in runs.settle(session, project, _lease_s(ctx), candidates):
        ctx.platform.audit.append(
            session,
            actor=SYSTEM.name,
            action="pipeline.run.expire",
            resource=f"project:{project.name}/pipeline:{run.pipeline}/run:{run.id}",
            project=project.name,
            outcome="ok",
            detail={"error": run.error},
        )
