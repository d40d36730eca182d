"""The server side of the node agents: registration and heartbeats, what each node should
start, watch and stop, what they report back, and nodes that went silent.

Agents talk to the server only through the REST API (the built-in one of ``underlay up``
too), so one code path serves a laptop and a cluster.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from underlay import identity
from underlay.audit import AuditLog
from underlay.compute import alerts, ledger, logs
from underlay.compute.inventory import NodeInventory, assess
from underlay.compute.jobs import ended_reason, secrets_of, transition
from underlay.compute.models import AcceleratorRow, Job, JobAttempt, NodeRow
from underlay.compute.schemas import AgentWork, AttemptEnded, AttemptRef, LaunchInfo, WorkerInfo
from underlay.compute.states import ACTIVE, JobState, is_final
from underlay.config import Settings
from underlay.crypto import Keyring, seal, unseal
from underlay.errors import Conflict, NotFound
from underlay.store.models import ApiToken, Project, User
from underlay.store.types import utcnow


def read_node(session: Session, name: str) -> NodeRow:
    node = session.scalar(select(NodeRow).where(NodeRow.name == name))
    if node is None:
        raise NotFound(f"node {name[:128]!r} not found")
    return node


def list_nodes(session: Session) -> list[tuple[NodeRow, list[AcceleratorRow]]]:
    nodes = list(session.scalars(select(NodeRow).order_by(NodeRow.name)))
    accs: dict[int, list[AcceleratorRow]] = {n.id: [] for n in nodes}
    for acc in session.scalars(select(AcceleratorRow).order_by(AcceleratorRow.index)):
        accs.setdefault(acc.node_id, []).append(acc)
    return [(n, accs[n.id]) for n in nodes]


def heartbeat(session: Session, inventory: NodeInventory, settings: Settings) -> NodeRow:
    """Register or refresh a node and its accelerators; cordon unhealthy accelerators."""
    now = utcnow()
    node = session.scalar(select(NodeRow).where(NodeRow.name == inventory.name))
    if node is None:
        node = NodeRow(
            name=inventory.name,
            cpu_milli=inventory.cpu_milli,
            memory_mib=inventory.memory_mib,
            registered_at=now,
        )
        session.add(node)
        session.flush()
    elif node.status == "lost":
        node.status, node.status_reason = "ready", "back after being lost"
    node.hostname = inventory.hostname[:255]
    node.cpu_milli = inventory.cpu_milli
    node.memory_mib = inventory.memory_mib
    node.cpu_utilization = inventory.cpu_utilization
    node.simulated = inventory.simulated
    node.isolation = inventory.isolation
    node.labels = json.dumps(list(inventory.labels))
    node.heartbeat_at = now
    existing = {
        a.index: a
        for a in session.scalars(select(AcceleratorRow).where(AcceleratorRow.node_id == node.id))
    }
    seen = set()
    for info in inventory.accelerators:
        seen.add(info.index)
        row = existing.get(info.index)
        if row is None:
            row = AcceleratorRow(
                node_id=node.id, index=info.index, type=info.type, memory_mib=info.memory_mib
            )
            session.add(row)
        healthy, reason = assess(info, settings)
        for name in (
            "uuid",
            "vendor",
            "type",
            "memory_mib",
            "memory_used_mib",
            "utilization",
            "power_watts",
            "idle_watts",
            "busy_watts",
            "temperature_c",
            "ecc_errors",
            "mig",
            "simulated",
        ):
            setattr(row, name, getattr(info, name))
        row.healthy, row.health_reason = healthy, reason[:500]
    for index, row in existing.items():
        if index not in seen and row.healthy:
            row.healthy = False
            row.health_reason = f"GPU {index} ({row.type}, {row.uuid}) is no longer reported"
    session.flush()
    _track_idle_gpus(session, node, settings, now)
    return node


def _track_idle_gpus(session: Session, node: NodeRow, settings: Settings, now: dt.datetime) -> None:
    """Flag a running job whose GPU has sat near 0% for ``idle_gpu_after_s`` (owner + admins
    see the alert); clear the flag when the GPU gets busy or is released."""
    held: dict[int, Job] = {}
    for _attempt, job in _attempts_on(session, node.name, [JobState.running]):
        for worker in json.loads(job.placement or "{}").get("workers", []):
            if worker["node"] == node.name:
                held.update(dict.fromkeys(worker["gpus"], job))
    limit = settings.compute.idle_gpu_utilization
    accs = session.scalars(select(AcceleratorRow).where(AcceleratorRow.node_id == node.id))
    for acc in accs:
        job_holding = held.get(acc.index)
        subject = f"{node.name}/gpu{acc.index}"
        # NVML cannot report a MIG slice's utilisation: never call one idle
        if job_holding is None or acc.mig or acc.utilization > limit:
            if acc.idle_since is not None:
                acc.idle_since = None
                alerts.resolve_alert(session, "idle_gpu", subject)
            continue
        acc.idle_since = acc.idle_since or now
        idle_s = (now - acc.idle_since).total_seconds()
        if idle_s >= settings.compute.idle_gpu_after_s:
            alerts.record_alert(
                session,
                "idle_gpu",
                f"job {job_holding.id} holds GPU {acc.index} ({acc.type}) of node {node.name} "
                f"at {acc.utilization:.0%} utilisation for {idle_s:.0f} s: release it or use it",
                project_id=job_holding.project_id,
                job_id=job_holding.id,
                subject=subject,
            )


def set_cordon(session: Session, name: str, cordoned: bool, reason: str) -> NodeRow:
    node = read_node(session, name)
    if node.status == "lost" and not cordoned:
        raise Conflict(f"node {name!r} is lost; it returns when its agent heartbeats again")
    node.status = "cordoned" if cordoned else "ready"
    node.status_reason = reason[:500] if cordoned else ""
    return node


def _attempts_on(session: Session, node: str, states: list[str]) -> list[tuple[JobAttempt, Job]]:
    rows = session.execute(
        select(JobAttempt, Job)
        .join(Job, Job.id == JobAttempt.job_id)
        .where(
            JobAttempt.node == node, JobAttempt.state.in_(states), Job.attempts == JobAttempt.number
        )
        .order_by(JobAttempt.id)
    )
    return [(a, j) for a, j in rows]


def work_for(
    session: Session, node: NodeRow, *, keyring: Keyring, settings: Settings, server_url: str
) -> AgentWork:
    """What ``node`` should launch (admitted attempts) and watch or stop (running ones)."""
    launch: list[LaunchInfo] = []
    running: list[AttemptRef] = []
    now = utcnow()
    for attempt, job in _attempts_on(session, node.name, [JobState.admitted, JobState.running]):
        stop = job.stop_requested
        grace = max(0.0, (job.stop_deadline - now).total_seconds()) if job.stop_deadline else 0.0
        if job.state not in ACTIVE:
            # its job ended without it (a record left by a cancel that raced a placement):
            # never launched, and stopped at once if it runs
            stop, grace = stop or "cancel", 0.0
        if attempt.state == JobState.admitted and stop is None:
            launch.append(_launch_info(session, attempt, job, keyring, server_url))
        else:
            running.append(
                AttemptRef(
                    attempt_id=attempt.id,
                    job_id=job.id,
                    attempt=attempt.number,
                    pid=attempt.pid,
                    pid_started=attempt.pid_started,
                    stop=stop,
                    stop_reason=job.reason if stop else "",
                    grace_s=grace,
                    log_offset=logs.size(settings.home, job.id, attempt.number),
                )
            )
    return AgentWork(node_status=node.status, launch=launch, running=running)


def _launch_info(
    session: Session, attempt: JobAttempt, job: Job, keyring: Keyring, server_url: str
) -> LaunchInfo:
    placement = json.loads(attempt.placement)
    workers = _workers(session, placement)
    project = session.get(Project, job.project_id)
    env = json.loads(job.env)
    env.update(_job_identity(session, job, attempt, server_url, keyring))
    return LaunchInfo(
        attempt_id=attempt.id,
        job_id=job.id,
        attempt=attempt.number,
        project=project.name if project else "",
        project_id=job.project_id,
        command=json.loads(job.command),
        env=env,
        secrets=secrets_of(session, job, keyring),
        workdir_digest=job.workdir_digest,
        cpu_milli=job.cpu_milli,
        memory_mib=int(job.memory_mib),
        gpu_indexes=workers[0].gpu_indexes,
        gpu_uuids=workers[0].gpu_uuids,
        gpu_fraction=job.gpu_milli / 1000 if job.gpu_milli else None,
        max_runtime_s=job.max_runtime_s,
        workers=workers,
    )


def _workers(session: Session, placement: dict[str, Any]) -> list[WorkerInfo]:
    """Each worker's node and accelerators (indexes and UUIDs), in rank order."""
    names = {w["node"] for w in placement["workers"]}
    uuids: dict[tuple[str, int], str] = {
        (name, index): uuid
        for name, index, uuid in session.execute(
            select(NodeRow.name, AcceleratorRow.index, AcceleratorRow.uuid)
            .join(NodeRow, NodeRow.id == AcceleratorRow.node_id)
            .where(NodeRow.name.in_(names))
        )
        if uuid
    }
    return [
        WorkerInfo(
            node=w["node"],
            gpu_indexes=list(w["gpus"]),
            gpu_uuids=[uuids[(w["node"], g)] for g in w["gpus"] if (w["node"], g) in uuids],
        )
        for w in placement["workers"]
    ]


def _job_identity(
    session: Session, job: Job, attempt: JobAttempt, url: str, keyring: Keyring
) -> dict[str, str]:
    """``UNDERLAY_URL``, the attempt's token and ``UNDERLAY_JOB_ID``, for the SDK in the job.

    The token is minted once per attempt (kind ``job``: its project only, at most as a member;
    see :mod:`underlay.identity`), kept sealed under the project's data key so a repeated
    launch order carries the same one, expires with the attempt's max run time (a day
    without one) and is revoked when the attempt ends."""
    env = {
        "UNDERLAY_URL": url,
        "UNDERLAY_JOB_ID": str(job.id),
        "UNDERLAY_ATTEMPT": str(attempt.number),
    }
    user = session.get(User, job.user_id) if job.user_id else None
    if user is None or not user.is_active:
        return env
    key = keyring.data_key(session, job.project_id)
    aad = f"job-token:{attempt.id}".encode()
    if attempt.token_sealed is not None:
        what = f"token of attempt {attempt.id}"
        env["UNDERLAY_TOKEN"] = unseal(key, attempt.token_sealed, aad, what).decode()
        return env
    lifetime = (job.max_runtime_s or 86400.0) + 3600.0  # time to queue, start and report
    _, secret = identity.create_token(
        session,
        user,
        f"job-{job.id}-{attempt.number}",
        expires_in_days=None,
        expires_in_s=lifetime,
        kind=identity.TokenKind.job,
        project_id=job.project_id,
    )
    attempt.token_sealed = seal(key, secret.encode(), aad)
    env["UNDERLAY_TOKEN"] = secret
    return env


def _revoke_job_tokens(session: Session, job: Job, attempt: JobAttempt) -> None:
    name = f"job-{job.id}-{attempt.number}"
    for token in session.scalars(select(ApiToken).where(ApiToken.name == name)):
        token.revoked_at = token.revoked_at or utcnow()
    attempt.token_sealed = None


def read_attempt(session: Session, node: NodeRow, attempt_id: int) -> tuple[JobAttempt, Job]:
    # FOR SHARE: a project delete waits for this report (or log chunk) to commit, or this
    # one finds the attempt gone; a log file is never written after its project's purge
    attempt = session.get(JobAttempt, attempt_id, with_for_update={"read": True})
    if attempt is None or attempt.node != node.name:
        raise NotFound(
            f"attempt {attempt_id} is not assigned to node {node.name!r} (or no longer "
            "exists: its project was deleted); stop it"
        )
    job = session.get(Job, attempt.job_id)
    assert job is not None
    return attempt, job


def attempt_started(
    session: Session, audit: AuditLog, node: NodeRow, attempt_id: int, pid: int, pid_started: float
) -> None:
    attempt, job = read_attempt(session, node, attempt_id)
    if attempt.state != JobState.admitted or job.attempts != attempt.number:
        raise Conflict(f"attempt {attempt_id} is {attempt.state}; it cannot start")
    attempt.pid, attempt.pid_started = pid, pid_started
    attempt.state = JobState.running
    attempt.started_at = utcnow()
    transition(
        session,
        audit,
        job,
        JobState.running,
        f"running on node {node.name}",
        actor=f"node:{node.name}",
    )


def attempt_ended(
    session: Session,
    audit: AuditLog,
    node: NodeRow,
    attempt_id: int,
    report: AttemptEnded,
    settings: Settings,
) -> None:
    """Record how an attempt ended, bill it once, and requeue the job if it may run again."""
    attempt, job = read_attempt(session, node, attempt_id)
    if attempt.state not in ACTIVE:
        return  # reported already (an agent retrying its report): nothing runs or bills twice
    now = utcnow()
    attempt.state, attempt.reason = report.state, report.reason[:1000]
    attempt.exit_code, attempt.ended_at = report.exit_code, now
    _revoke_job_tokens(session, job, attempt)
    usage = ledger.attempt_usage_for(attempt, report, settings, now)
    ledger.bill_attempt(session, attempt, usage)
    job.attained_service += attempt.gpu_share_milli / 1000 * usage.wall_s
    if job.state not in ACTIVE:
        return  # the job ended without this attempt (see work_for): only the attempt closes
    job.exit_code = report.exit_code
    if job.state == JobState.admitted and report.state == "preempted":
        # its node went away before it started (a spot reclaim): back to the queue
        transition(session, audit, job, JobState.queued, f"requeued: {report.reason}"[:1000])
        return
    if job.state == JobState.admitted and report.state in ("succeeded", "failed"):
        transition(session, audit, job, JobState.running, "started", actor=f"node:{node.name}")
    transition(
        session,
        audit,
        job,
        JobState(report.state),
        ended_reason(report.state, report.reason) or report.state,
        actor=f"node:{node.name}",
    )
    _maybe_requeue(session, audit, job)


def _maybe_requeue(session: Session, audit: AuditLog, job: Job) -> None:
    state = job.state
    if state == JobState.preempted:
        transition(
            session, audit, job, JobState.queued, f"requeued after preemption ({job.reason})"
        )
    elif state in (JobState.failed, JobState.lost) and not is_final(
        state, job.attempts, job.max_retries
    ):
        transition(
            session,
            audit,
            job,
            JobState.queued,
            f"retry {job.attempts} of {job.max_retries} after: {job.reason}",
        )


def _silent(lost_after_s: float) -> Select[NodeRow]:
    cutoff = utcnow() - dt.timedelta(seconds=lost_after_s)
    return select(NodeRow).where(NodeRow.status != "lost", NodeRow.heartbeat_at < cutoff)


def any_silent_nodes(session: Session, lost_after_s: float) -> bool:
    """Whether :func:`mark_lost_nodes` would find a node to mark (a read: the scheduling loop
    asks every round, and takes the write lock only when the answer is yes)."""
    return session.scalar(_silent(lost_after_s).with_only_columns(NodeRow.id).limit(1)) is not None


def mark_lost_nodes(
    session: Session, audit: AuditLog, lost_after_s: float, settings: Settings
) -> list[str]:
    """Nodes silent for ``lost_after_s``: lost, and their attempts lost (and retried)."""
    lost: list[str] = []
    for node in session.scalars(_silent(lost_after_s)):
        node.status = "lost"
        node.status_reason = f"no heartbeat since {node.heartbeat_at.isoformat()}"
        lost.append(node.name)
        for attempt, _job in _attempts_on(session, node.name, list(ACTIVE)):
            report = AttemptEnded(state="lost", reason=f"node {node.name} stopped answering")
            attempt_ended(session, audit, node, attempt.id, report, settings)
    return lost


def node_detail(node: NodeRow, accs: list[AcceleratorRow]) -> dict[str, Any]:
    from underlay.compute.schemas import AcceleratorRead, NodeRead

    read = NodeRead.model_validate(node)
    read.accelerators = [AcceleratorRead.model_validate(a) for a in accs]
    return read.model_dump()


def reclaim_node(
    session: Session, audit: AuditLog, name: str, reason: str, settings: Settings
) -> list[int]:
    """A node whose machine was taken back (a spot reclaim): lost at once, not after
    ``node_lost_after_s``, and its attempts preempted, so their jobs requeue without using
    up a retry. Returns those jobs' ids (none if the node never registered)."""
    node = session.scalar(select(NodeRow).where(NodeRow.name == name))
    if node is None:
        return []
    node.status, node.status_reason = "lost", reason[:500]
    jobs = []
    for attempt, job in _attempts_on(session, node.name, list(ACTIVE)):
        report = AttemptEnded(state="preempted", reason=reason)
        attempt_ended(session, audit, node, attempt.id, report, settings)
        jobs.append(job.id)
    return jobs


def node_is_idle(session: Session, name: str) -> bool:
    """Whether no attempt is admitted to or running on node ``name``."""
    return not _attempts_on(session, name, list(ACTIVE))


def retire_node(session: Session, name: str) -> bool:
    """Remove a node whose machine is gone for good (the autoscaler terminated it): its row,
    its accelerators, and its agent's tokens (revoked). False if there was no such node."""
    node = session.scalar(select(NodeRow).where(NodeRow.name == name))
    for token in session.scalars(select(ApiToken).where(ApiToken.node == name)):
        token.revoked_at = token.revoked_at or utcnow()
    if node is None:
        return False
    for acc in session.scalars(select(AcceleratorRow).where(AcceleratorRow.node_id == node.id)):
        session.delete(acc)
    session.delete(node)
    session.flush()
    return True
