"""From the store to the scheduler's snapshot, and from its decisions back to the store.

:func:`build_snapshot` reads nodes, accelerators, active and queued jobs and quotas in one
read-only transaction (:meth:`~underlay.store.Database.read_session`), which holds up no
writer however long it takes; :func:`apply_decisions` then writes one round's decisions in
one short write transaction, so a crash mid-apply neither loses nor doubles a placement (the
round is simply redone).

Design decision: **optimistic placement.** Between the snapshot and the write, jobs are
cancelled, nodes go lost or report a failing GPU, and (in a split brain, or a round redone)
another placement may land. The write therefore re-checks, under the write lock, what each
decision depended on: the job is still queued with the same attempt count (running, and not
yet asked to stop, for a preemption), every node it is placed on still has the status,
resources, labels and accelerators the snapshot saw (:class:`SnapshotIndex`), and no attempt
was written since the snapshot (the newest attempt id; on PostgreSQL the writes of rounds are
serialised by a transaction-level advisory lock, so that check cannot race). A decision whose
ground moved is not written and the next round decides again; capacity only grows otherwise
(jobs end, nodes come), so nothing the snapshot counted as free can have been taken.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import weakref
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from underlay.audit import AuditLog
from underlay.compute.jobs import transition, workload_of
from underlay.compute.models import AcceleratorRow, Job, JobAttempt, NodeRow, QuotaRow
from underlay.compute.scheduler import (
    Accelerator,
    Decisions,
    Node,
    Place,
    PolicyConfig,
    PowerModel,
    Preempt,
    Quota,
    Running,
    Snapshot,
    WorkerPlacement,
    Workload,
)
from underlay.compute.states import ACTIVE, JobState
from underlay.store.models import Project


@dataclass(frozen=True, slots=True)
class SeenJob:
    """A job as the snapshot saw it: what writing a decision about it re-checks."""

    state: str
    attempts: int
    reason: str
    stop_requested: str | None


@dataclass
class SnapshotIndex:
    """What a snapshot's string ids stand for, and what its decisions depended on: each job
    and node as seen (a node as :func:`_fingerprint`) and the newest attempt id."""

    jobs: dict[str, SeenJob] = field(default_factory=dict)
    projects: dict[int, str] = field(default_factory=dict)
    nodes: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    last_attempt: int = 0


@dataclass
class Applied:
    """What :func:`apply_decisions` wrote: how many jobs it admitted, and each decision it
    refused because its ground moved since the snapshot (``redo``: the whole round was)."""

    admitted: int = 0
    refused: list[str] = field(default_factory=list)
    redo: bool = False


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
# the same for jobs: up to ten thousand active and queued ones per round
_JOB_COLUMNS = (Job.id, Job.project_id, Job.state, Job.attempts, Job.reason, Job.stop_requested,
                Job.stop_deadline, Job.placement, Job.queued_at, Job.admitted_at, Job.cpu_milli,
                Job.memory_mib, Job.gpus, Job.gpu_milli, Job.gpu_type, Job.gang, Job.priority,
                Job.deferrable, Job.attained_service, Job.preemptible, Job.app, Job.max_per_node,
                Job.node_selector)  # fmt: skip
_ROUND_LOCK_ID = 0x756E7772  # "unwr": PostgreSQL advisory lock taken by each round's write
_CHUNK = 500  # ids per IN list


# The bulk reads run as Core statements on the session's connection: the ORM's result
# machinery costs several times the database's own work per row, and none of these tables is
# project-scoped (jobs are, but the scheduler reads every project's: its scope is everything).
def _accelerators(session: Session) -> dict[int, list[Any]]:
    rows: dict[int, list[Any]] = defaultdict(list)
    query = select(*_ACCELERATOR_COLUMNS).order_by(AcceleratorRow.index)
    for acc in session.connection().execute(query):
        rows[acc.node_id].append(acc)
    return rows


def _nodes(session: Session) -> Any:
    return session.connection().execute(select(*_NODE_COLUMNS).order_by(NodeRow.name))


def _fingerprint(row: Any, accs: list[Any]) -> tuple[Any, ...]:
    """What placing work on a node depends on: its row and its accelerators' rows as read
    (the columns of capacity, health and power; not its heartbeat time or readings)."""
    return (tuple(row), tuple(map(tuple, accs)))


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


def placement_of(job: Any) -> dict[str, Any]:
    """A job's (or an attempt's) placement JSON, decoded; empty if it has none."""
    return json.loads(job.placement) if job.placement else {}


@dataclass
class _Memo:
    """What the previous snapshot built from each row (per database): a round rebuilds only
    the jobs and nodes whose rows changed, instead of ten thousand workloads and a thousand
    nodes every time. Keys are whole rows, so a changed row is simply a miss."""

    jobs: dict[tuple[Any, ...], tuple[SeenJob, Workload | Running]] = field(default_factory=dict)
    nodes: dict[tuple[Any, ...], Node] = field(default_factory=dict)


_memos: weakref.WeakKeyDictionary[Any, _Memo] = weakref.WeakKeyDictionary()


def build_snapshot(
    session: Session, config: PolicyConfig, now: dt.datetime
) -> tuple[Snapshot, SnapshotIndex]:
    """The scheduler's snapshot of the store, and what it depended on. Meant for a
    :meth:`~underlay.store.Database.read_session` (one consistent view, no write lock)."""
    index = SnapshotIndex()
    index.projects = {p.id: p.name for p in session.scalars(select(Project))}
    index.last_attempt = session.scalar(select(func.max(JobAttempt.id))) or 0
    bind = session.get_bind()
    memo, fresh = _memos.get(bind) or _Memo(), _Memo()
    used: dict[str, dict[str, Any]] = {}
    running: list[Running] = []
    pending: list[Workload] = []
    query = select(*_JOB_COLUMNS).where(Job.state.in_([*ACTIVE, JobState.queued]))
    for row in session.connection().execute(query.order_by(Job.id)):
        project = index.projects.get(row.project_id, str(row.project_id))
        key = (*row, project)
        entry = memo.jobs.get(key) or _job_entry(row, project, now)
        if row.admitted_at is not None or row.state == JobState.queued:
            fresh.jobs[key] = entry  # (an active job without a start time runs from "now")
        seen, item = entry
        index.jobs[str(row.id)] = seen
        if isinstance(item, Workload):
            pending.append(item)
            continue
        running.append(item)
        for worker in item.workers:
            slot = used.setdefault(worker.node, {"cpu": 0, "mem": 0, "gpu": defaultdict(int)})
            slot["cpu"] += row.cpu_milli
            slot["mem"] += int(row.memory_mib)
            for gpu in worker.gpus:
                slot["gpu"][gpu] += worker.gpu_milli
    nodes = _snapshot_nodes(session, used, index, memo, fresh)
    _memos[bind] = fresh
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


def _job_entry(row: Any, project: str, now: dt.datetime) -> tuple[SeenJob, Workload | Running]:
    seen = SeenJob(row.state, row.attempts, row.reason, row.stop_requested)
    if row.state == JobState.queued:
        return seen, workload_of(row, project)
    placement = placement_of(row)
    workers = tuple(
        WorkerPlacement(w["node"], tuple(w["gpus"]), w["gpu_milli"])
        for w in placement.get("workers", [])
    )
    started = row.admitted_at or now
    draining = row.stop_deadline.timestamp() if row.stop_requested and row.stop_deadline else None
    gpu_type = str(placement["gpu_type"]) if placement.get("gpu_type") else None
    workload = workload_of(row, project)
    return seen, Running(workload, workers, started.timestamp(), gpu_type, draining)


def _snapshot_nodes(
    session: Session,
    used: dict[str, dict[str, Any]],
    index: SnapshotIndex,
    memo: _Memo,
    fresh: _Memo,
) -> tuple[Node, ...]:
    accs = _accelerators(session)
    nodes = []
    for row in _nodes(session):
        devices = accs[row.id]
        index.nodes[row.name] = seen = _fingerprint(row, devices)
        slot = used.get(row.name)
        load = (slot["cpu"], slot["mem"], tuple(sorted(slot["gpu"].items()))) if slot else None
        key = (seen, load)
        node = memo.nodes.get(key) or _node(row, devices, slot)
        fresh.nodes[key] = node
        nodes.append(node)
    return tuple(nodes)


def _changed_waits(decisions: Decisions, index: SnapshotIndex) -> list[tuple[str, str]]:
    """The waiting jobs whose reason differs from the one they have, with the new reason."""
    out = []
    for wait in decisions.waits:
        seen = index.jobs.get(wait.workload_id)
        if seen is None or seen.reason != wait.reason[:1000]:
            out.append((wait.workload_id, wait.reason[:1000]))
    return out


def has_writes(decisions: Decisions, index: SnapshotIndex) -> bool:
    """Whether :func:`apply_decisions` would write anything (a round in which every job keeps
    waiting for the reason it already has needs no write transaction at all)."""
    return bool(
        decisions.places
        or decisions.preempts
        or decisions.rejects
        or _changed_waits(decisions, index)
    )


def apply_decisions(
    session: Session, audit: AuditLog, decisions: Decisions, index: SnapshotIndex, now: dt.datetime
) -> Applied:
    """Write one round's decisions, each only where what it depended on still holds (the
    module docstring); meant for a write transaction of its own, after the snapshot's."""
    applied = Applied()
    if _attempts_written_since(session, index):
        applied.redo = True
        applied.refused.append("an attempt was written since the snapshot: the round is redone")
        return applied
    changed = _changed_nodes(session, index, decisions.places)
    waits = _changed_waits(decisions, index)
    ids = [p.workload_id for p in decisions.places] + [r.workload_id for r in decisions.rejects]
    ids += [p.workload_id for p in decisions.preempts] + [wid for wid, _ in waits]
    jobs = _lock_jobs(session, ids)
    for place in decisions.places:
        refusal = _place_refusal(place, jobs.get(place.workload_id), index, changed)
        if refusal is None:
            _place(session, audit, jobs[place.workload_id], place, now)
            applied.admitted += 1
        else:
            applied.refused.append(refusal)
    for preempt in decisions.preempts:
        job = jobs.get(preempt.workload_id)
        seen = index.jobs[preempt.workload_id]
        if job is None or job.state not in ACTIVE or job.attempts != seen.attempts:
            applied.refused.append(f"job {preempt.workload_id} is no longer running: not preempted")
        elif job.stop_requested is None:
            _preempt(session, audit, job, preempt, index, now)
    for wid, reason in waits:
        job = jobs.get(wid)
        if job is not None and job.state == JobState.queued:
            job.reason = reason
    for reject in decisions.rejects:
        job = jobs.get(reject.workload_id)
        if job is None or job.state != JobState.queued:
            applied.refused.append(f"job {reject.workload_id} is no longer queued: not rejected")
            continue
        transition(session, audit, job, JobState.failed, f"can never run here: {reject.reason}")
        job.finished_at = now
    return applied


def _attempts_written_since(session: Session, index: SnapshotIndex) -> bool:
    if session.get_bind().dialect.name == "postgresql":
        # rounds' writes one at a time: the check below sees every earlier round's attempts
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ROUND_LOCK_ID})
    newest = session.scalar(select(func.max(JobAttempt.id))) or 0
    return newest != index.last_attempt


def _chunks(ids: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for at in range(0, len(ids), _CHUNK):
        yield ids[at : at + _CHUNK]


def _changed_nodes(session: Session, index: SnapshotIndex, places: Sequence[Place]) -> set[str]:
    """The nodes placed on whose status, resources, labels or accelerators differ from the
    snapshot's (read under a share lock on PostgreSQL, so no heartbeat changes them before
    this transaction commits)."""
    names = sorted({w.node for p in places for w in p.workers})
    rows: list[Any] = []
    accs: dict[int, list[Any]] = defaultdict(list)
    conn = session.connection()
    for chunk in _chunks(names):
        nodes = select(*_NODE_COLUMNS).where(NodeRow.name.in_(chunk)).order_by(NodeRow.id)
        rows += conn.execute(nodes.with_for_update(read=True)).all()
    for chunk in _chunks(sorted(r.id for r in rows)):
        devices = select(*_ACCELERATOR_COLUMNS).where(AcceleratorRow.node_id.in_(chunk))
        devices = devices.order_by(AcceleratorRow.node_id, AcceleratorRow.index)
        for acc in conn.execute(devices.with_for_update(read=True)):
            accs[acc.node_id].append(acc)
    now_seen = {r.name: _fingerprint(r, accs[r.id]) for r in rows}
    return {name for name in names if now_seen.get(name) != index.nodes.get(name)}


def _lock_jobs(session: Session, ids: list[str]) -> dict[str, Job]:
    """The jobs decided about, as they are now (locked until commit on PostgreSQL)."""
    jobs: dict[str, Job] = {}
    for chunk in _chunks(sorted({int(i) for i in ids})):
        query = select(Job).where(Job.id.in_(chunk)).order_by(Job.id).with_for_update()
        jobs.update((str(job.id), job) for job in session.scalars(query))
    return jobs


def _place_refusal(
    place: Place, job: Job | None, index: SnapshotIndex, changed: set[str]
) -> str | None:
    seen = index.jobs[place.workload_id]
    if job is None:
        return f"job {place.workload_id} is gone: not placed"
    if job.state != JobState.queued or job.attempts != seen.attempts:
        return f"job {job.id} is {job.state} since the snapshot: not placed"
    moved = sorted({w.node for w in place.workers} & changed)
    if moved:
        return f"node {moved[0]} changed since the snapshot: job {job.id} not placed"
    return None


def _place(session: Session, audit: AuditLog, job: Job, place: Place, now: dt.datetime) -> None:
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


def _preempt(
    session: Session,
    audit: AuditLog,
    job: Job,
    preempt: Preempt,
    index: SnapshotIndex,
    now: dt.datetime,
) -> None:
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
