"""Jobs: submit, read, list, cancel, and every state transition, checked and audited here.

A submitted job is checked against the cluster's hardware by the scheduler's own policy (a
request that no node could ever satisfy is refused at once with the policy's reason) and
against the project's budget. Secrets are sealed with the project's data key and handed only
to the node agent that runs the job.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import replace
from typing import Any

from sqlalchemy import Row, Select, func, select
from sqlalchemy.orm import Session, lazyload

from underlay.audit import AuditLog
from underlay.compute import budgets
from underlay.compute.models import Job
from underlay.compute.scheduler import WHOLE, Node, Reject, Request, Snapshot, Workload, decide
from underlay.compute.scheduler.constraints import parse_labels
from underlay.compute.schemas import PRIORITIES, JobCreate, JobRead
from underlay.compute.states import ACTIVE, JobState, check_transition, is_final
from underlay.config import Settings
from underlay.crypto import Keyring, seal, unseal
from underlay.errors import Conflict, InvalidInput, NotFound
from underlay.identity import Actor, authorize_owner
from underlay.store.models import Blob, Project, User
from underlay.store.types import utcnow


def _secrets_aad(project_id: int) -> bytes:
    return f"underlay job secrets v1 project {project_id}".encode()


def workload_of(job: Job | Row[Any], project: str, clock_of: dt.datetime | None = None) -> Workload:
    """The scheduler's view of a job (an ORM object, or a row of the columns it reads)."""
    queued = clock_of or job.queued_at
    return Workload(
        id=str(job.id),
        project=project,
        request=Request(
            cpu_milli=job.cpu_milli,
            memory_mib=int(job.memory_mib),
            gpus=job.gpus,
            gpu_milli=job.gpu_milli,
            gpu_type=job.gpu_type,
        ),
        gang=job.gang,
        priority=job.priority,
        deferrable=job.deferrable,
        submit_time=queued.timestamp(),
        attained_service=job.attained_service,
        preemptible=job.preemptible,
        app=job.app,
        max_per_node=job.max_per_node,
        node_selector=tuple(json.loads(job.node_selector or "[]")),
    )


def submit_job(
    session: Session,
    project: Project,
    actor: Actor,
    body: JobCreate,
    *,
    keyring: Keyring,
    settings: Settings,
) -> tuple[Job, list[str]]:
    """Queue a job; returns it and any warnings (a budget nearly spent)."""
    if body.gpus and body.gpu_fraction is not None:
        raise InvalidInput("ask for either whole gpus or a gpu_fraction, not both")
    if body.workdir_digest is not None:
        found = session.scalar(
            select(Blob.id).where(Blob.project_id == project.id, Blob.digest == body.workdir_digest)
        )
        if found is None:
            raise NotFound(
                f"project {project.name!r} has no blob sha256:{body.workdir_digest} for the "
                "working directory: upload it first"
            )
    warnings = _check_budget(session, project, utcnow(), settings)
    job = Job(
        project_id=project.id,
        name=body.name,
        user_id=actor.user_id or None,
        command=json.dumps(body.command),
        workdir_digest=body.workdir_digest,
        env=json.dumps(body.env),
        cpu_milli=round(body.cpus * 1000),
        memory_mib=body.memory_mib,
        gpus=body.gpus,
        gpu_milli=round(body.gpu_fraction * WHOLE) if body.gpu_fraction else 0,
        gpu_type=body.gpu_type,
        gang=body.gang,
        priority_class=body.priority,
        priority=PRIORITIES[body.priority],
        deferrable=body.deferrable,
        preemptible=body.preemptible,
        app=body.app,
        max_per_node=body.max_per_node,
        node_selector=json.dumps(list(parse_labels(body.node_selector))),
        max_runtime_s=body.max_runtime_s,
        max_retries=body.max_retries,
        state=JobState.queued,
        attempts=0,
        attained_service=0.0,
        queued_at=utcnow(),
    )
    if job.gpu_milli == 0 and body.gpu_fraction:
        raise InvalidInput("gpu_fraction is below one thousandth of a GPU")
    if body.gang > 1 and settings.compute.executor != "ray":
        raise InvalidInput(
            "gangs of more than one worker need an executor that supports gangs; the local "
            "executor does not: submit gang=1, split the job, or run the cluster with "
            "compute.executor = 'ray' (docs/scaling.md)"
        )
    reject = _never_fits(session, job, project.name, settings)
    if reject is not None:
        raise InvalidInput(f"this job can never run here: {reject}")
    session.add(job)
    session.flush()
    if body.secrets:
        key = keyring.data_key(session, project.id)
        job.secrets_sealed = seal(key, json.dumps(body.secrets).encode(), _secrets_aad(project.id))
    return job, warnings


def _never_fits(session: Session, job: Job, project: str, settings: Settings) -> str | None:
    """The policy's reject reason for ``job`` on the registered nodes, if any (judged on a
    recent copy of the nodes; a refusal only on fresh ones)."""
    from underlay.compute.snapshots import idle_cluster, recent_idle_cluster

    copies = max(1, job.gang)
    nodes, fresh = recent_idle_cluster(session, copies)
    reason = _reject_reason(nodes + _groups(settings, copies), job, project, settings)
    if reason is not None and not fresh:
        nodes = idle_cluster(session, copies) + _groups(settings, copies)
        reason = _reject_reason(nodes, job, project, settings)
    return reason


def _groups(settings: Settings, copies: int) -> tuple[Node, ...]:
    """The autoscaler's node groups as nodes not yet up: work they could host may queue."""
    if not settings.compute.autoscaler.groups:
        return ()
    from underlay.compute.autoscaler.providers import groups_of, headroom_nodes

    return headroom_nodes(groups_of(settings.compute.autoscaler), {}, copies)


def _reject_reason(
    nodes: tuple[Node, ...], job: Job, project: str, settings: Settings
) -> str | None:
    from underlay.compute.scheduler import policy_config

    if not nodes:
        if settings.compute.local_agent:
            return None  # this server's own agent registers in a moment: queue, judge then
        return "no node is registered yet; start a node agent"
    workload = replace(workload_of(job, project, utcnow()), id="new")
    config = policy_config(settings.compute.policy)
    decisions = decide(
        Snapshot(clock=utcnow().timestamp(), nodes=nodes, pending=(workload,), config=config)
    )
    for reject in decisions.rejects:
        if isinstance(reject, Reject):
            return reject.reason
    return None


def _check_budget(
    session: Session, project: Project, now: dt.datetime, settings: Settings
) -> list[str]:
    if not budgets.has_limits(session, project.id):
        return []
    status = budgets.budget_status(session, project.id, now, settings)
    status.raise_if_blocked()
    return [status.message] if status.state == "warn" else []


def secrets_of(session: Session, job: Job, keyring: Keyring) -> dict[str, str]:
    if job.secrets_sealed is None:
        return {}
    key = keyring.data_key(session, job.project_id, create=False)
    plain = unseal(
        key, job.secrets_sealed, _secrets_aad(job.project_id), f"secrets of job {job.id}"
    )
    value: dict[str, str] = json.loads(plain)
    return value


def read_job(session: Session, job_id: int, project: Project | None = None) -> Job:
    job = session.get(Job, job_id)
    if job is None or (project is not None and job.project_id != project.id):
        where = f" in project {project.name!r}" if project else ""
        raise NotFound(f"job {job_id} not found{where}")
    # session.get bypasses the ORM scope hook for identity-map hits: check the scope too
    scope = session.info["scope"]
    if not scope.allows(job.project_id):
        raise NotFound(f"job {job_id} not found")
    return job


def _jobs_query(project: Project | None, states: list[str] | None, name: str | None) -> Select[Job]:
    query = select(Job)
    if project is not None:
        query = query.where(Job.project_id == project.id)
    if states:
        query = query.where(Job.state.in_(states))
    if name:
        escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Job.name.like(f"%{escaped}%", escape="\\"))
    return query


def list_jobs(
    session: Session,
    *,
    project: Project | None = None,
    states: list[str] | None = None,
    limit: int = 100,
    offset: int = 0,
    name: str | None = None,
) -> list[Job]:
    """The newest jobs first (in the session's scope), ``offset`` of them skipped; ``name``
    keeps those whose name contains it."""
    query = _jobs_query(project, states, name).order_by(Job.id.desc())
    return list(session.scalars(query.limit(limit).offset(offset)))


def count_jobs(
    session: Session,
    *,
    project: Project | None = None,
    states: list[str] | None = None,
    name: str | None = None,
) -> int:
    """How many jobs :func:`list_jobs` would page through (counted in SQL)."""
    query = _jobs_query(project, states, name).with_only_columns(func.count(Job.id))
    return session.scalar(query) or 0


def transition(
    session: Session,
    audit: AuditLog,
    job: Job,
    new: JobState,
    reason: str,
    *,
    actor: str = "scheduler",
) -> None:
    """Move ``job`` to ``new`` (checked against the state machine) and audit it."""
    previous = job.state
    check_transition(job.id, previous, new)
    now = utcnow()
    job.state = new
    job.reason = reason[:1000]
    if new == JobState.queued:
        job.queued_at = now
        job.placement = None
        job.stop_requested = None
        job.stop_deadline = None
    elif new == JobState.admitted:
        job.admitted_at = now
    elif new == JobState.running:
        job.started_at = job.started_at or now
    if is_final(new, job.attempts, job.max_retries) or new in (
        JobState.succeeded,
        JobState.cancelled,
    ):
        job.finished_at = now
    project = session.get(Project, job.project_id)
    audit.append(
        session,
        actor=actor[:64],
        action=f"job.{new}",
        resource=f"project:{project.name if project else job.project_id}/job:{job.id}",
        project=project.name if project else None,
        outcome="ok",
        detail={"from": previous, "reason": reason[:300]},
    )


_CANCELLING = re.compile(r"^cancelling \(requested by (.+)\)$")


def ended_reason(state: str, reason: str) -> str:
    """The reason a job keeps once an attempt ended in ``state``: a cancel requested while
    it ran ("cancelling (requested by alice)") becomes "cancelled by alice", as for a job
    cancelled in the queue; any other reason is kept."""
    match = _CANCELLING.match(reason)
    if state == JobState.cancelled and match:
        return f"cancelled by {match.group(1)}"
    return reason


def cancel_job(session: Session, audit: AuditLog, job: Job, actor: Actor, grace_s: float) -> Job:
    """Cancel at once if it holds nothing; otherwise ask its node to stop it within the grace.
    Only the job's owner or an admin (of its project or global) may cancel it.

    The job is read again under a row lock first: a round that placed it since it was read
    (queued then, admitted now) would otherwise be written over, leaving a "cancelled" job
    whose attempt its node goes on launching."""
    session.refresh(job, with_for_update=True)
    project = session.get(Project, job.project_id)
    if project is not None:
        authorize_owner(actor, project, job.user_id, f"job {job.id}")
    if job.state == JobState.queued:
        transition(
            session, audit, job, JobState.cancelled, f"cancelled by {actor.name}", actor=actor.name
        )
    elif job.state in ACTIVE:
        if job.stop_requested != "cancel":
            job.stop_requested = "cancel"
            job.stop_deadline = utcnow() + dt.timedelta(seconds=grace_s)
            job.reason = f"cancelling (requested by {actor.name})"
    else:
        raise Conflict(f"job {job.id} is {job.state} already; there is nothing to cancel")
    return job


_NAME_ONLY = lazyload(User.grant_rows)


def render(session: Session, job: Job, warnings: list[str] | None = None) -> JobRead:
    project = session.get(Project, job.project_id)
    # only the name is shown: not the grants that a user loads with by default
    user = session.get(User, job.user_id, options=[_NAME_ONLY]) if job.user_id else None
    node = None
    if job.placement:
        node = json.loads(job.placement).get("node")
    return JobRead(
        id=job.id,
        project=project.name if project else "",
        name=job.name,
        user=user.name if user else None,
        command=json.loads(job.command),
        state=job.state,
        reason=job.reason,
        cpus=job.cpu_milli / 1000,
        memory_mib=int(job.memory_mib),
        gpus=job.gpus,
        gpu_fraction=job.gpu_milli / WHOLE if job.gpu_milli else None,
        gpu_type=job.gpu_type,
        gang=job.gang,
        priority=job.priority_class,
        deferrable=job.deferrable,
        preemptible=job.preemptible,
        app=job.app,
        max_per_node=job.max_per_node,
        node_selector=json.loads(job.node_selector or "[]"),
        max_runtime_s=job.max_runtime_s,
        max_retries=job.max_retries,
        attempts=job.attempts,
        exit_code=job.exit_code,
        borrowed=job.borrowed,
        node=node,
        submitted_at=job.submitted_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        warnings=warnings or [],
    )
