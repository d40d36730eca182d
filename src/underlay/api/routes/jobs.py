"""Jobs of a project: submit, list (with each pending job's reason), show, cancel, logs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from underlay import identity
from underlay.api.deps import Ctx
from underlay.compute import jobs, logs
from underlay.compute.schemas import JobCreate, JobRead
from underlay.compute.states import JobState, is_final
from underlay.errors import NotFound
from underlay.identity import Action

router = APIRouter(prefix="/projects/{project}/jobs", tags=["jobs"])
by_id = APIRouter(prefix="/jobs", tags=["jobs"])
JobId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.post("", response_model=JobRead, status_code=201)
def submit_job(project: str, body: JobCreate, ctx: Ctx) -> JobRead:
    with ctx.unit("job.submit", f"project:{project}/job", project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        platform = ctx.platform
        job, warnings = jobs.submit_job(
            u.session, found, ctx.actor, body, keyring=platform.keyring, settings=platform.settings
        )
        u.resource = f"project:{project}/job:{job.id}"
        u.detail = {
            "command": body.command[0][:100],
            "gpus": body.gpus,
            "gpu_fraction": body.gpu_fraction,
            "warnings": warnings,
        }
        result = jobs.render(u.session, job, warnings)
    ctx.platform.wake_scheduler()
    return result


@router.get("", response_model=list[JobRead])
def list_jobs(
    project: str,
    ctx: Ctx,
    state: Annotated[list[JobState] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobRead]:
    with ctx.unit("job.list", f"project:{project}/jobs", project=project, audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        states = [str(s) for s in state] if state else None
        rows = jobs.list_jobs(u.session, project=found, states=states, limit=limit)
        return [jobs.render(u.session, j) for j in rows]


@router.get("/{job_id}", response_model=JobRead)
def read_job(project: str, job_id: JobId, ctx: Ctx) -> JobRead:
    with ctx.unit(
        "job.read", f"project:{project}/job:{job_id}", project=project, audited=False
    ) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return jobs.render(u.session, jobs.read_job(u.session, job_id, found))


@by_id.get("/{job_id}", response_model=JobRead)
def read_job_by_id(job_id: JobId, ctx: Ctx) -> JobRead:
    """A job by its global id. A job of a project the caller cannot see answers 404 exactly
    as a missing one does: the id space is global, its contents are not."""
    with ctx.unit("job.read", f"job:{job_id}", audited=False) as u:
        return jobs.render(u.session, jobs.read_job(u.session, job_id))


@router.post("/{job_id}/cancel", response_model=JobRead)
def cancel_job(project: str, job_id: JobId, ctx: Ctx) -> JobRead:
    with ctx.unit("job.cancel", f"project:{project}/job:{job_id}", project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        job = jobs.read_job(u.session, job_id, found)
        jobs.cancel_job(
            u.session, ctx.platform.audit, job, ctx.actor, ctx.platform.settings.compute.grace_s
        )
        return jobs.render(u.session, job)


@router.get(
    "/{job_id}/logs",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
def job_logs(
    project: str,
    job_id: JobId,
    ctx: Ctx,
    follow: bool = False,
    offset: Annotated[int, Query(ge=0, le=2**40)] = 0,
) -> StreamingResponse:
    """The job's output so far from ``offset``, streamed in bounded slices; with ``follow``
    it keeps streaming what is appended until the job ends."""
    with ctx.unit("job.logs", f"project:{project}/job:{job_id}", project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        jobs.read_job(u.session, job_id, found)
    home = ctx.platform.settings.home

    def finished() -> bool:
        try:
            with ctx.unit("job.read", f"job:{job_id}", audited=False) as u:
                job = jobs.read_job(u.session, job_id)
                return is_final(job.state, job.attempts, job.max_retries)
        except NotFound:  # its project was deleted while we followed: the log ends here
            return True

    async def body() -> AsyncIterator[bytes]:
        position = offset
        done = False
        while True:
            # a bounded slice from where this reader is: nothing before it is read again, and
            # a follower that is caught up only stats the files until more is appended
            chunk = await anyio.to_thread.run_sync(logs.read, home, job_id, position)
            if chunk:
                position += len(chunk)
                yield chunk
                continue
            if not follow or done:
                return
            done = await anyio.to_thread.run_sync(finished)  # then read what came before it
            if not done:
                await asyncio.sleep(0.25)

    return StreamingResponse(body(), media_type="text/plain; charset=utf-8")
