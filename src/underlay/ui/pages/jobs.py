"""``/jobs``: the caller's jobs (filters, state, the policy's reason for each waiting job),
``/jobs/{id}`` (facts, a live log, cancel), and the submit form.

Writes go through the same services and the same audited units as ``POST
/api/v1/projects/{project}/jobs`` and ``…/cancel``; the server authorizes them again whatever
the page showed. The log follows through ``/jobs/{id}/log?offset=N``: plain text (shown with
``textContent``, never as HTML) with ``X-Log-Offset`` and ``X-Log-Done`` headers.
"""

from __future__ import annotations

import shlex
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from underlay import identity
from underlay.api.deps import client_address
from underlay.compute import jobs, logs
from underlay.compute.schemas import JobCreate
from underlay.compute.states import JobState, is_final
from underlay.errors import Conflict, InvalidInput, NotFound
from underlay.identity import Action
from underlay.platform import Platform
from underlay.store.models import Project
from underlay.ui.auth import Caller, Form, PlatformDep, UiCaller
from underlay.ui.pagination import PER_PAGE, clamp_page, paginate
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)
JobId = Annotated[int, Path(ge=1, le=2**31 - 1)]
STATES = [str(s) for s in JobState]
WAITING = {str(JobState.queued), str(JobState.preempted), str(JobState.failed)}
PRIORITIES = ("low", "normal", "high")
NO_FILTERS = {"project": "", "state": "", "name": ""}


def _filters(caller: UiCaller, project: str, state: str, name: str) -> dict[str, Any]:
    if project and caller.project(project) is None:
        raise NotFound(f"project {project[:64]!r} not found")
    if state and state not in STATES:
        raise InvalidInput(f"state must be one of {', '.join(STATES)}")
    return {"project": project, "state": state, "name": name[:128]}


@router.get("/jobs")
def list_jobs(
    request: Request,
    caller: Caller,
    platform: PlatformDep,
    project: Annotated[str, Query(max_length=64)] = "",
    state: Annotated[str, Query(max_length=16)] = "",
    name: Annotated[str, Query(max_length=128)] = "",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    filters = _filters(caller, project, state, name)
    return _jobs_page(request, caller, platform, filters, clamp_page(page))


def _jobs_page(
    request: Request,
    caller: UiCaller,
    platform: Platform,
    filters: dict[str, Any],
    page: int,
    *,
    form: FormData | None = None,
    error: str = "",
) -> HTMLResponse:
    """One page of the caller's jobs, and the submit form (with what was typed and what is
    wrong with it after a refused submission: then the status is 400)."""
    project, state, name = filters["project"], filters["state"], filters["name"]
    with platform.db.session(caller.actor.scope) as session:
        found = identity.read_project(session, project, caller.actor) if project else None
        criteria: dict[str, Any] = {
            "project": found,
            "states": [state] if state else None,
            "name": name or None,
        }
        total = jobs.count_jobs(session, **criteria)
        rows = jobs.list_jobs(session, limit=PER_PAGE, offset=(page - 1) * PER_PAGE, **criteria)
        items = [jobs.render(session, j) for j in rows]
    url = request.url if form is None else request.url.replace(query="")
    return render(
        request,
        "jobs.html",
        caller,
        status_code=400 if error else 200,
        page=paginate(items, total=total, page=page, url=url),
        filters=filters,
        states=STATES,
        writable=[p.name for p in caller.projects if caller.can(Action.write, p.name)],
        priorities=PRIORITIES,
        form={k: v for k, v in (form or {}).items() if isinstance(v, str) and k != "csrf"},
        error=error,
    )


def _number(field: str, value: str, kind: type[int] | type[float]) -> int | float:
    try:
        number = kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise InvalidInput(f"{field}: {value[:32]!r} is not {what}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise InvalidInput(f"{field}: {value[:32]!r} is not a finite number")
    return number


def job_create(form: FormData) -> tuple[str, JobCreate]:
    """The project and the job a submit form asks for; InvalidInput says what is wrong."""

    def text(key: str, default: str = "") -> str:
        value = form.get(key, default)
        return value.strip() if isinstance(value, str) else default

    try:
        command = shlex.split(text("command"))
    except ValueError as exc:
        raise InvalidInput(f"command: {exc}") from None
    if not command:
        raise InvalidInput("command: give the program to run and its arguments")
    fields: dict[str, Any] = {
        "command": command,
        "name": text("name"),
        "priority": text("priority", "normal") or "normal",
        "cpus": _number("cpus", text("cpus", "1") or "1", float),
        "memory_mib": _number("memory_mib", text("memory_mib", "512") or "512", int),
        "gpus": _number("gpus", text("gpus", "0") or "0", int),
    }
    if text("max_runtime_s"):
        fields["max_runtime_s"] = _number("max_runtime_s", text("max_runtime_s"), float)
    try:
        body = JobCreate.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{where}: {first['msg']}") from None
    return text("project"), body


def submit(platform: Platform, caller: UiCaller, client: str, project: str, body: JobCreate) -> int:
    """Submit as ``POST /api/v1/projects/{project}/jobs`` does (same unit, same audit)."""
    resource = f"project:{project[:64]}/job"
    with platform.unit(caller.actor, "job.submit", resource, project=project, client=client) as u:
        found = identity.read_project(u.session, project, caller.actor, Action.write)
        job, warnings = jobs.submit_job(
            u.session,
            found,
            caller.actor,
            body,
            keyring=platform.keyring,
            settings=platform.settings,
        )
        u.resource = f"project:{project}/job:{job.id}"
        u.detail = {"command": body.command[0][:100], "gpus": body.gpus, "warnings": warnings}
        job_id = job.id
    platform.wake_scheduler()
    return job_id


@router.post("/jobs")
def submit_job(request: Request, caller: Caller, form: Form, platform: PlatformDep) -> Response:
    try:
        project, body = job_create(form)
        job_id = submit(platform, caller, client_address(request), project, body)
    except (InvalidInput, Conflict) as exc:  # a typo, never fits, over budget: on the form
        return _jobs_page(request, caller, platform, NO_FILTERS, 1, form=form, error=exc.message)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.get("/jobs/{job_id}")
def show_job(
    request: Request, job_id: JobId, caller: Caller, platform: PlatformDep
) -> HTMLResponse:
    # the page shows the log: a sensitive read, audited once per page (not its follow-ups)
    client = client_address(request)
    with platform.unit(caller.actor, "job.logs", f"job:{job_id}", client=client) as u:
        row = jobs.read_job(u.session, job_id)
        job = jobs.render(u.session, row)
        u.resource, u.project = f"project:{job.project}/job:{job_id}", job.project
        done = is_final(row.state, row.attempts, row.max_retries)
    head = logs.read(platform.settings.home, job_id, 0)
    return render(
        request,
        "job.html",
        caller,
        job=job,
        log=head.decode("utf-8", errors="replace"),
        log_offset=len(head),
        done=done,
        can_cancel=not done and caller.can(Action.write, job.project),
    )


def _finished(session: Session, job_id: int) -> bool:
    job = jobs.read_job(session, job_id)
    return is_final(job.state, job.attempts, job.max_retries)


@router.get("/jobs/{job_id}/log")
async def job_log(
    job_id: JobId,
    caller: Caller,
    platform: PlatformDep,
    offset: Annotated[int, Query(ge=0, le=2**40)] = 0,
) -> Response:
    """The log from ``offset`` (a bounded slice) for the page's live view."""

    def read() -> tuple[bytes, bool]:
        with platform.db.session(caller.actor.scope) as session:
            done = _finished(session, job_id)  # first: what is read after it is complete
        return logs.read(platform.settings.home, job_id, offset), done

    chunk, done = await anyio.to_thread.run_sync(read)
    return Response(
        chunk,
        media_type="text/plain; charset=utf-8",
        headers={
            "X-Log-Offset": str(offset + len(chunk)),
            "X-Log-Done": "1" if done and not chunk else "0",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    request: Request, job_id: JobId, caller: Caller, form: Form, platform: PlatformDep
) -> Response:
    """Cancel as ``POST …/jobs/{id}/cancel`` does: the project's write right, then the owner
    rule (the job's owner, a project admin or a global admin)."""
    client = client_address(request)
    with platform.unit(caller.actor, "job.cancel", f"job:{job_id}", client=client) as u:
        job = jobs.read_job(u.session, job_id)
        project = u.session.get(Project, job.project_id)
        name = project.name if project else ""
        u.resource, u.project = f"project:{name}/job:{job_id}", name
        identity.read_project(u.session, name, caller.actor, Action.write)
        jobs.cancel_job(
            u.session, platform.audit, job, caller.actor, platform.settings.compute.grace_s
        )
    platform.wake_scheduler()
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)
