"""A round's snapshot is read without the write lock and its decisions are written later: what
changed in between (a cancel, a lost node, a failing GPU, another placement) is re-checked
when writing, and a decision whose ground moved is refused, never written over it. Each test
runs on SQLite and on PostgreSQL (the ``db`` fixture), with the real store, policy and audit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import func, select

from tests.compute.test_services import (
    NODE,
    World,
    assert_audit_ok,
    attempts_of,
    beat,
    gpu,
    inventory,
    read,
    round_,
    submit,
)
from underlay.audit import AuditLog
from underlay.compute import jobs, loop, nodes, snapshots
from underlay.compute.models import JobAttempt
from underlay.compute.scheduler import Decisions, decide, policy_config
from underlay.compute.states import JobState
from underlay.config import ComputeSettings, Settings
from underlay.crypto import Keyring, SigningKey
from underlay.identity import SYSTEM
from underlay.store import Database, Scope
from underlay.store.models import Project
from underlay.store.types import utcnow


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.compute = ComputeSettings(max_temperature_c=90.0, node_lost_after_s=300.0)
    return settings


@pytest.fixture
def w(db: Database, settings: Settings) -> Iterator[World]:
    signer = SigningKey(settings)
    with db.session(Scope.everything()) as s:
        project = Project(name="vision")
        s.add(project)
        s.flush()
        project_id = project.id
    yield World(db, settings, AuditLog(db, signer), Keyring(settings), signer, project_id)


def snapshot_and_decide(w: World) -> tuple[Decisions, snapshots.SnapshotIndex]:
    """The first half of a round: the snapshot, read without the write lock, and its decisions."""
    with w.db.read_session(Scope.everything()) as s:
        snapshot, index = snapshots.build_snapshot(s, policy_config("default"), utcnow())
    return decide(snapshot), index


def write(w: World, decisions: Decisions, index: snapshots.SnapshotIndex) -> snapshots.Applied:
    """The second half: the decisions written in a write transaction of their own."""
    with w.db.session(Scope.everything()) as s:
        return snapshots.apply_decisions(s, w.audit, decisions, index, utcnow())


def placed_gpus(decisions: Decisions) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(p.workload_id, w.node, w.gpus) for p in decisions.places for w in p.workers]


def attempts(w: World) -> int:
    with w.db.session(Scope.everything()) as s:
        return s.scalar(select(func.count()).select_from(JobAttempt)) or 0


def test_a_cancel_between_snapshot_and_write_is_not_overridden(w: World) -> None:
    beat(w, inventory(gpu(0)))
    job_id, _ = submit(w, gpus=1)
    decisions, index = snapshot_and_decide(w)
    assert placed_gpus(decisions) == [(str(job_id), NODE, (0,))]
    with w.db.session(Scope.everything()) as s:  # the owner cancels while the round decides
        jobs.cancel_job(s, w.audit, jobs.read_job(s, job_id), SYSTEM, grace_s=1.0)
    applied = write(w, decisions, index)
    assert applied.admitted == 0
    assert applied.refused == [f"job {job_id} is cancelled since the snapshot: not placed"]
    job = read(w, job_id)
    assert job.state == JobState.cancelled and job.placement is None and job.attempts == 0
    assert attempts_of(w, job_id) == []
    assert_audit_ok(w)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_cancel_that_read_the_job_before_a_round_placed_it_stops_the_placed_job(
    w: World,
) -> None:
    """The cancel read the job queued; a round placed it and committed before the cancel
    wrote. The cancel must see the placement (a stop request for the admitted job), not write
    "cancelled" over it: that left an admitted attempt of a cancelled job, which its node's
    agent tried to start on every tick. PostgreSQL only: on SQLite a write transaction holds
    the database from its first statement, so the round cannot commit in between."""
    beat(w, inventory(gpu(0)))
    job_id, _ = submit(w, gpus=1)
    with w.db.session(Scope.everything()) as s:
        job = jobs.read_job(s, job_id)
        assert job.state == JobState.queued
        assert round_(w) == 1  # another connection places it and commits
        jobs.cancel_job(s, w.audit, job, SYSTEM, grace_s=1.0)
    job = read(w, job_id)
    assert (job.state, job.stop_requested) == (JobState.admitted, "cancel")
    (attempt,) = attempts_of(w, job_id)
    assert attempt.state == JobState.admitted
    assert_audit_ok(w)


def _lose_the_node(w: World) -> None:
    with w.db.session(Scope.everything()) as s:
        assert nodes.mark_lost_nodes(s, w.audit, 0.0, w.settings) == [NODE]


def _overheat_the_gpu(w: World) -> None:
    (acc,) = beat(w, inventory(gpu(0, temperature_c=97.0)))
    assert not acc.healthy


@pytest.mark.parametrize("change", [_lose_the_node, _overheat_the_gpu], ids=["lost", "hot"])
def test_a_node_that_changed_between_snapshot_and_write_gets_no_placement(
    w: World, change: Callable[[World], None]
) -> None:
    beat(w, inventory(gpu(0)))
    job_id, _ = submit(w, gpus=1)
    decisions, index = snapshot_and_decide(w)
    assert placed_gpus(decisions) == [(str(job_id), NODE, (0,))]
    change(w)
    applied = write(w, decisions, index)
    assert applied.admitted == 0
    assert applied.refused == [f"node {NODE} changed since the snapshot: job {job_id} not placed"]
    assert read(w, job_id).state == JobState.queued and attempts_of(w, job_id) == []
    # the node comes back healthy: the next round places the job on it
    beat(w, inventory(gpu(0)))
    assert round_(w) == 1
    assert read(w, job_id).state == JobState.admitted
    assert_audit_ok(w)


def test_a_placement_written_since_the_snapshot_voids_the_round(w: World) -> None:
    """Two rounds decided from snapshots of the same free GPU (a split brain, or a round
    redone): the one written second would double-book it, and writes nothing instead."""
    beat(w, inventory(gpu(0)))
    low, _ = submit(w, gpus=1)
    early, early_index = snapshot_and_decide(w)
    high, _ = submit(w, gpus=1, priority="high")
    late, late_index = snapshot_and_decide(w)
    assert placed_gpus(early) == [(str(low), NODE, (0,))]
    assert placed_gpus(late) == [(str(high), NODE, (0,))]
    assert write(w, late, late_index).admitted == 1
    applied = write(w, early, early_index)
    assert applied.redo and applied.admitted == 0
    assert applied.refused == ["an attempt was written since the snapshot: the round is redone"]
    assert read(w, low).state == JobState.queued and attempts_of(w, low) == []
    (attempt,) = attempts_of(w, high)
    assert json.loads(attempt.placement)["workers"][0]["gpus"] == [0]
    assert attempts(w) == 1
    assert_audit_ok(w)


def test_a_round_writes_once_whatever_it_raced(w: World) -> None:
    """The same decisions written twice (a round retried after its commit was not seen): the
    second write finds the job placed already and the attempt written, and adds nothing."""
    beat(w, inventory(gpu(0), gpu(1)))
    job_id, _ = submit(w, gpus=1)
    decisions, index = snapshot_and_decide(w)
    assert write(w, decisions, index).admitted == 1
    assert write(w, decisions, index).admitted == 0
    assert [a.number for a in attempts_of(w, job_id)] == [1]
    assert_audit_ok(w)


def test_a_round_that_changes_nothing_takes_no_write_lock(w: World, db: Database) -> None:
    """A job that keeps waiting for the reason it already has needs no write: the round runs
    while another transaction holds the write lock (on SQLite a writer would wait on it; the
    round's database gives up on a held lock after 50 ms)."""
    beat(w, inventory(gpu(0)))
    submit(w, gpus=1)
    assert round_(w) == 1
    job_id, _ = submit(w, gpus=1)  # the only GPU is taken: it waits, for the same reason
    assert round_(w) == 0
    reason = read(w, job_id).reason
    assert "no healthy node has 1 free A100 GPUs" in reason
    impatient = Database(db.url, busy_timeout_s=0.05)
    try:
        with db.session(Scope.everything()) as holder:  # holds the write lock throughout
            holder.add(Project(name="other"))
            holder.flush()
            assert loop.run_round(impatient, w.audit, w.settings) == 0
    finally:
        impatient.dispose()
    assert read(w, job_id).reason == reason


def test_a_snapshot_rebuilds_only_what_changed_since_the_last(w: World) -> None:
    """Ten thousand jobs and a thousand nodes are not rebuilt every round: a workload or a
    node whose rows did not change is the very object of the last snapshot; a changed one is
    built again, from its new row."""
    beat(w, inventory(gpu(0), gpu(1)))
    beat(w, inventory(gpu(0), name="other"))
    first, second = submit(w, gpus=1)[0], submit(w, gpus=1)[0]

    def take() -> dict[str, object]:
        with w.db.read_session(Scope.everything()) as s:
            snapshot, _ = snapshots.build_snapshot(s, policy_config("default"), utcnow())
        return {**{x.id: x for x in snapshot.pending}, **{n.name: n for n in snapshot.nodes}}

    before = take()
    with w.db.session(Scope.everything()) as s:
        jobs.read_job(s, second).priority = 10
    beat(w, inventory(gpu(0, temperature_c=97.0), name="other"))
    after = take()
    assert after[str(first)] is before[str(first)] and after[NODE] is before[NODE]
    assert after[str(second)] is not before[str(second)]
    assert after[str(second)].priority == 10  # type: ignore[attr-defined]
    assert after["other"] is not before["other"]
    assert not after["other"].accelerators[0].healthy  # type: ignore[attr-defined]
