"""From the store to the scheduler's snapshot, and from its decisions back to the store.

:func:`build_snapshot` reads nodes, accelerators, active attempts, queued jobs and quotas in
one transaction; :func:`apply_decisions` writes one round's decisions in the same
transaction, so a crash mid-apply neither loses nor doubles a placement (the round is
simply redone).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import weakref
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay.audit import AuditLog
from underlay.compute.jobs import transition, workload_of
from underlay.compute.models import AcceleratorRow, Job, JobAttempt, NodeRow, QuotaRow
from underlay.compute.scheduler import (
    Accelerator,
    Decisions,
    Node,
    PolicyConfig,
    PowerModel,
    Quota,
    Running,
    Snapshot,
    WorkerPlacement,
)
from underlay.compute.states import ACTIVE, JobState
from underlay.store.models import Project


@dataclass
class SnapshotIndex:
    """What a snapshot's string ids stand for."""

    jobs: dict[str, Job] = field(default_factory=dict)
    projects: dict[int, str] = field(default_factory=dict)


# The columns a snapshot needs, read as plain rows: a thousand nodes of eight GPUs are 8,000
# accelerator rows, and ORM objects for them cost most of a round (and of a submission's
# "could this ever fit" check) before anything was decided.
_ACCELERATOR_COLUMNS = (
    AcceleratorRow.node_id,
    AcceleratorRow.index,
    AcceleratorRow.type,
    AcceleratorRow.memory_mib,
    AcceleratorRow.healthy,
    AcceleratorRow.idle_watts,
    AcceleratorRow.busy_watts,
)
_NODE_COLUMNS = (NodeRow.id, NodeRow.name, NodeRow.cpu_milli, NodeRow.memory_mib, NodeRow.status,
                 NodeRow.labels)  # fmt: skip


def _accelerators(session: Session) -> dict[int, list[Any]]:
    rows: dict[int, list[Any]] = defaultdict(list)
    query = select(*_ACCELERATOR_COLUMNS).order_by(AcceleratorRow.index)
    for acc in session.execute(query):
        rows[acc.node_id].append(acc)
    return rows


def _nodes(session: Session) -> Any:
    return session.execute(select(*_NODE_COLUMNS).order_by(NodeRow.name))


def _node(row: Any, accs: list[Any], used: dict[str, object] | None) -> Node:
    cpu = mem = 0
    shares: dict[int, int] = {}
    if used:
        cpu, mem, shares = used["cpu"], used["mem"], used["gpu"]  # type: ignore[assignment]
    accelerators = tuple(
        Accelerator(
            type=a.type,
            memory_mib=int(a.memory_mib),
            free_milli=max(0, 1000 - shares.get(a.index, 0)),
            healthy=a.healthy,
            power=PowerModel(a.idle_watts, a.busy_watts)
            if a.idle_watts is not None and a.busy_watts is not None
            else None,
        )
        for a in accs
    )
    return Node(
        name=row.name,
        cpu_milli=row.cpu_milli,
        memory_mib=int(row.memory_mib),
        free_cpu_milli=max(0, row.cpu_milli - cpu),
        free_memory_mib=max(0, int(row.memory_mib) - mem),
        accelerators=accelerators,
        healthy=row.status == "ready",
        labels=tuple(json.loads(row.labels or "[]")),
    )


def idle_cluster(session: Session, copies: int = 1) -> tuple[Node, ...]:
    """The registered nodes as if nothing ran on them (for "could this ever fit"). Lost and
    cordoned nodes count: their hardware is a reason to wait, not to refuse. Nodes of one
    shape (resources, labels, health and accelerators) answer that question alike, so at
    most ``copies`` of each are kept (a gang's worker count): a thousand identical nodes are
    judged as one."""
    accs = _accelerators(session)
    seen: Counter[tuple[Any, ...]] = Counter()
    out = []
    for row in _nodes(session):
        devices = accs[row.id]
        shape = (row.cpu_milli, row.memory_mib, row.status, row.labels,
                 tuple(tuple(a)[2:] for a in devices))  # fmt: skip
        if seen[shape] < copies:
            seen[shape] += 1
            out.append(_node(row, devices, None))
    return tuple(out)


IDLE_CLUSTER_TTL_S = 5.0
_idle_clusters: weakref.WeakKeyDictionary[Any, tuple[float, int, tuple[Node, ...]]] = (
    weakref.WeakKeyDictionary()
)


def recent_idle_cluster(session: Session, copies: int = 1) -> tuple[tuple[Node, ...], bool]:
    """:func:`idle_cluster` as read at most :data:`IDLE_CLUSTER_TTL_S` ago by this process
    (per database), and whether it was read just now. Every submission asks whether its job
    could ever fit; with a thousand nodes reading them costs far more than the rest of the
    submission, and the answer changes only when hardware comes or goes. A caller that would
    refuse on a copy asks again with fresh data first."""
    engine = session.get_bind()
    now = time.monotonic()
    found = _idle_clusters.get(engine)
    if found is not None and found[0] > now and found[1] == copies:
        return found[2], False
    nodes = idle_cluster(session, copies)
    _idle_clusters[engine] = (now + IDLE_CLUSTER_TTL_S, copies, nodes)
    return nodes, True


def placement_of(attempt_or_job: Job | JobAttempt) -> dict[str, Any]:
    return json.loads(attempt_or_job.placement) if attempt_or_job.placement else {}


def build_snapshot(
    session: Session, config: PolicyConfig, now: dt.datetime
) -> tuple[Snapshot, SnapshotIndex]:
    index = SnapshotIndex()
    index.projects = {p.id: p.name for p in session.scalars(select(Project))}
    jobs = list(session.scalars(select(Job).where(Job.state.in_([*ACTIVE, JobState.queued]))))
    used: dict[str, dict[str, object]] = {}
    running: list[Running] = []
    pending = []
    for job in sorted(jobs, key=lambda j: j.id):
        index.jobs[str(job.id)] = job
        project = index.projects.get(job.project_id, str(job.project_id))
        if job.state == JobState.queued:
            pending.append(workload_of(job, project))
            continue
        placement = placement_of(job)
        workers = tuple(
            WorkerPlacement(w["node"], tuple(w["gpus"]), w["gpu_milli"])
            for w in placement.get("workers", [])
        )
        for worker in workers:
            slot = used.setdefault(worker.node, {"cpu": 0, "mem": 0, "gpu": defaultdict(int)})
            slot["cpu"] += job.cpu_milli  # type: ignore[operator]
            slot["mem"] += int(job.memory_mib)  # type: ignore[operator]
            for gpu in worker.gpus:
                slot["gpu"][gpu] += worker.gpu_milli  # type: ignore[index]
        started = job.admitted_at or now
        draining = (
            job.stop_deadline.timestamp() if job.stop_requested and job.stop_deadline else None
        )
        running.append(
            Running(
                workload_of(job, project),
                workers,
                started.timestamp(),
                str(placement["gpu_type"]) if placement.get("gpu_type") else None,
                draining,
            )
        )
    accs = _accelerators(session)
    nodes = tuple(_node(row, accs[row.id], used.get(row.name)) for row in _nodes(session))
    quotas = tuple(
        Quota(
            index.projects.get(q.project_id, str(q.project_id)),
            q.accelerator_type,
            q.guaranteed,
            q.borrow_limit,
        )
        for q in session.scalars(select(QuotaRow).order_by(QuotaRow.id))
    )
    snapshot = Snapshot(now.timestamp(), nodes, tuple(running), tuple(pending), quotas, config)
    return snapshot, index


def apply_decisions(
    session: Session, audit: AuditLog, decisions: Decisions, index: SnapshotIndex, now: dt.datetime
) -> int:
    """Write one round's decisions; returns how many jobs were admitted."""
    for place in decisions.places:
        job = index.jobs[place.workload_id]
        workers = [
            {"node": w.node, "gpus": list(w.gpus), "gpu_milli": w.gpu_milli} for w in place.workers
        ]
        placement = json.dumps(
            {"node": workers[0]["node"], "workers": workers, "gpu_type": place.gpu_type}
        )
        job.attempts += 1
        job.placement = placement
        job.borrowed = place.borrowed
        session.add(
            JobAttempt(
                job_id=job.id,
                project_id=job.project_id,
                user_id=job.user_id,
                number=job.attempts,
                node=str(workers[0]["node"]),
                placement=placement,
                gpu_type=place.gpu_type,
                gpu_share_milli=sum(w.gpu_milli * len(w.gpus) for w in place.workers),
                cpu_milli=job.cpu_milli * len(place.workers),
                state=JobState.admitted,
                admitted_at=now,
            )
        )
        gpus = ", ".join(str(g) for w in place.workers for g in w.gpus)
        where = f"node {workers[0]['node']}" + (f" (GPU {gpus})" if gpus else "")
        borrowed = "; borrowing idle capacity, may be preempted" if place.borrowed else ""
        transition(session, audit, job, JobState.admitted, f"placed on {where}{borrowed}")
    for preempt in decisions.preempts:
        job = index.jobs[preempt.workload_id]
        if job.stop_requested is None:
            job.stop_requested = "preempt"
            job.stop_deadline = now + dt.timedelta(seconds=preempt.grace_s)
            job.reason = f"preempting: {preempt.reason}"[:1000]
            audit.append(
                session,
                actor="scheduler",
                action="job.preempt",
                resource=f"job:{job.id}",
                project=index.projects.get(job.project_id),
                outcome="ok",
                detail={"reason": preempt.reason[:300], "for": preempt.for_workload},
            )
    for wait in decisions.waits:
        job = index.jobs[wait.workload_id]
        if job.reason != wait.reason[:1000]:
            job.reason = wait.reason[:1000]
    for reject in decisions.rejects:
        job = index.jobs[reject.workload_id]
        transition(session, audit, job, JobState.failed, f"can never run here: {reject.reason}")
        job.finished_at = now
    return len(decisions.places)
