"""The live-compute services on the store, without a server: node health from heartbeats,
one scheduling round, a crash in the middle of applying one, the job state machine and
budgets at submit. Each test runs on SQLite and on PostgreSQL (the ``db`` fixture).

Nodes are registered with hand-built inventories, the way a node agent's heartbeat arrives;
the policy, the store and the audit log are the real ones.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import event, func, select

from underlay import identity
from underlay.audit import AuditLog
from underlay.compute import budgets, jobs, ledger, loop, nodes, snapshots
from underlay.compute.inventory import AcceleratorInfo, NodeInventory
from underlay.compute.models import AcceleratorRow, Job, JobAttempt
from underlay.compute.scheduler import Claim, decide, policy_config
from underlay.compute.schemas import AttemptEnded, JobCreate
from underlay.compute.states import ALLOWED, JobState, check_transition, is_final
from underlay.config import ComputeSettings, Settings
from underlay.crypto import Keyring, SigningKey
from underlay.errors import (
    Conflict,
    IntegrityFailure,
    InvalidInput,
    PermissionDenied,
    Unauthenticated,
)
from underlay.identity import SYSTEM
from underlay.store import Database, Scope
from underlay.store.models import ApiToken, AuditEntry, Project, Role
from underlay.store.types import utcnow

NODE = "gpu-1"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.compute = ComputeSettings(max_temperature_c=90.0, node_lost_after_s=300.0)
    return settings


@dataclass
class World:
    db: Database
    settings: Settings
    audit: AuditLog
    keyring: Keyring
    signer: SigningKey
    project_id: int


@pytest.fixture
def w(db: Database, settings: Settings) -> Iterator[World]:
    signer = SigningKey(settings)
    with db.session(Scope.everything()) as s:
        project = Project(name="vision")
        s.add(project)
        s.flush()
        project_id = project.id
    yield World(db, settings, AuditLog(db, signer), Keyring(settings), signer, project_id)


def gpu(index: int, **readings: float | int) -> AcceleratorInfo:
    return AcceleratorInfo(
        index=index,
        uuid=f"GPU-{NODE}-{index}",
        vendor="nvidia",
        type="A100",
        memory_mib=81920,
        idle_watts=50.0,
        busy_watts=400.0,
        **readings,  # type: ignore[arg-type]
    )


def inventory(*accelerators: AcceleratorInfo, name: str = NODE) -> NodeInventory:
    return NodeInventory(
        name=name,
        hostname=f"{name}.example",
        cpu_count=16,
        cpu_milli=16000,
        memory_mib=128 * 1024,
        accelerators=accelerators,
    )


def beat(w: World, inv: NodeInventory) -> list[AcceleratorRow]:
    with w.db.session(Scope.everything()) as s:
        node = nodes.heartbeat(s, inv, w.settings)
        return list(
            s.scalars(
                select(AcceleratorRow)
                .where(AcceleratorRow.node_id == node.id)
                .order_by(AcceleratorRow.index)
            )
        )


def submit(w: World, **fields: object) -> tuple[int, list[str]]:
    body = JobCreate.model_validate({"command": ["python", "-c", "pass"], **fields})
    with w.db.session(Scope.everything()) as s:
        project = s.get(Project, w.project_id)
        assert project is not None
        job, warnings = jobs.submit_job(
            s, project, SYSTEM, body, keyring=w.keyring, settings=w.settings
        )
        return job.id, warnings


def test_could_it_ever_fit_judges_each_node_shape_once(w: World) -> None:
    """A thousand alike nodes answer "could this job ever fit" as one does: the check that
    every submission makes keeps one node per shape (a gang's worker count of them)."""
    for i in range(5):
        beat(w, inventory(gpu(0), gpu(1), name=f"alike-{i}"))
    beat(w, inventory(gpu(0), name="small"))
    with w.db.session(Scope.everything()) as s:
        one = snapshots.idle_cluster(s)
        three = snapshots.idle_cluster(s, copies=3)
    assert [n.name for n in one] == ["alike-0", "small"]
    assert [n.name for n in three] == ["alike-0", "alike-1", "alike-2", "small"]
    assert [len(n.accelerators) for n in one] == [2, 1]
    with pytest.raises(InvalidInput, match="needs 3 GPUs per worker; the largest node has 2"):
        submit(w, gpus=3)
    job_id, _ = submit(w, gpus=2)
    assert read(w, job_id).state == JobState.queued


def test_a_refusal_is_judged_on_fresh_nodes_not_on_the_recent_copy(w: World) -> None:
    beat(w, inventory(gpu(0), name="small"))
    submit(w, gpus=1)  # judged on the nodes read now, kept for a few seconds
    beat(w, inventory(gpu(0), gpu(1), name="large"))
    with w.db.session(Scope.everything()) as s:
        copy, fresh = snapshots.recent_idle_cluster(s)
    assert not fresh and [n.name for n in copy] == ["small"]  # the copy predates "large"
    job_id, _ = submit(w, gpus=2)  # the copy would refuse it; the fresh nodes take it
    assert read(w, job_id).state == JobState.queued
    with pytest.raises(InvalidInput, match="needs 3 GPUs per worker; the largest node has 2"):
        submit(w, gpus=3)


def test_a_gang_needs_the_ray_executor(w: World) -> None:
    """The local executor runs one process tree per attempt: a gang is refused at submit,
    saying what to do; with compute.executor = 'ray' it queues."""
    beat(w, inventory(gpu(0), gpu(1)))
    with pytest.raises(InvalidInput, match=r"run the cluster with compute.executor = 'ray'"):
        submit(w, gang=2)
    w.settings.compute.executor = "ray"
    job_id, _ = submit(w, gang=2, gpus=1)
    assert read(w, job_id).state == JobState.queued
    assert round_(w) == 1
    with w.db.session(Scope.everything()) as s:
        work = nodes.work_for(
            s, nodes.read_node(s, NODE), keyring=w.keyring, settings=w.settings, server_url="u"
        )
    (launch,) = work.launch  # the first worker's node launches the whole gang
    placed = [(x.node, x.gpu_indexes, x.gpu_uuids) for x in launch.workers]
    assert sorted(placed) == [(NODE, [0], [f"GPU-{NODE}-0"]), (NODE, [1], [f"GPU-{NODE}-1"])]


def test_before_any_node_registers_a_job_queues_only_where_the_local_agent_will_come(
    w: World,
) -> None:
    """Just after `underlay up` its own agent has not registered yet: a job submitted then
    queues (the loop judges it once the node is there); with no local agent it is refused."""
    job_id, _ = submit(w)
    assert read(w, job_id).state == JobState.queued
    round_(w)  # the loop judges nothing while no node is registered
    assert read(w, job_id).state == JobState.queued
    w.settings.compute.local_agent = False
    with pytest.raises(InvalidInput, match="no node is registered yet; start a node agent"):
        submit(w)
    beat(w, inventory())  # the node comes: the queued job is placed
    round_(w)
    assert read(w, job_id).state not in (JobState.queued, JobState.failed)


def read(w: World, job_id: int) -> Job:
    with w.db.session(Scope.everything()) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def attempts_of(w: World, job_id: int) -> list[JobAttempt]:
    with w.db.session(Scope.everything()) as s:
        return list(
            s.scalars(
                select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.number)
            )
        )


def round_(w: World) -> int:
    return loop.run_round(w.db, w.audit, w.settings)


def assert_audit_ok(w: World) -> None:
    report = w.audit.verify(w.signer)
    assert report.ok, report.problem


# -- health from heartbeats -------------------------------------------------------------------


def test_hot_or_ecc_failing_accelerators_are_unhealthy_with_a_readable_reason(w: World) -> None:
    hot, ecc = beat(w, inventory(gpu(0, temperature_c=95.0), gpu(1, ecc_errors=2)))
    assert not hot.healthy
    assert "GPU 0 (A100, uuid GPU-gpu-1-0) is 95 °C, above the 90 °C limit" in hot.health_reason
    assert "check its cooling" in hot.health_reason
    assert not ecc.healthy
    assert "GPU 1 (A100, uuid GPU-gpu-1-1) has 2 uncorrected ECC errors" in ecc.health_reason
    assert "drain it" in ecc.health_reason


def test_unhealthy_accelerators_are_never_placed_on(w: World) -> None:
    beat(w, inventory(gpu(0, temperature_c=95.0), gpu(1, ecc_errors=1)))
    with w.db.session(Scope.everything()) as s:
        snapshot, _ = snapshots.build_snapshot(s, policy_config("default"), utcnow())
    (node,) = snapshot.nodes
    assert [a.healthy for a in node.accelerators] == [False, False]
    # the hardware exists, so the job is accepted and waits (it is not rejected)
    job_id, _ = submit(w, gpus=1)
    with w.db.session(Scope.everything()) as s:
        snapshot, _ = snapshots.build_snapshot(s, policy_config("default"), utcnow())
    decisions = decide(snapshot)
    assert decisions.places == () and decisions.rejects == ()
    for _ in range(2):
        assert round_(w) == 0
    job = read(w, job_id)
    assert job.state == JobState.queued and attempts_of(w, job_id) == []
    assert "no healthy node has 1 free A100 GPUs" in job.reason
    # cooled down and ECC cleared (a driver reset): placed on the next round
    beat(w, inventory(gpu(0, temperature_c=60.0), gpu(1)))
    assert round_(w) == 1
    assert read(w, job_id).state == JobState.admitted


def test_a_half_healthy_node_only_gets_work_on_its_healthy_accelerator(w: World) -> None:
    beat(w, inventory(gpu(0, temperature_c=99.0), gpu(1, temperature_c=40.0)))
    job_id, _ = submit(w, gpus=1)
    assert round_(w) == 1
    (attempt,) = attempts_of(w, job_id)
    assert json.loads(attempt.placement)["workers"][0]["gpus"] == [1]


def test_an_accelerator_that_disappears_is_unhealthy_until_it_returns(w: World) -> None:
    beat(w, inventory(gpu(0), gpu(1)))
    first, second = beat(w, inventory(gpu(0)))
    assert first.healthy
    assert not second.healthy
    assert second.health_reason == "GPU 1 (A100, GPU-gpu-1-1) is no longer reported"
    job_id, _ = submit(w, gpus=2)  # the node has had two: worth waiting for
    assert round_(w) == 0
    assert "no healthy node has 2 free A100 GPUs" in read(w, job_id).reason
    _, back = beat(w, inventory(gpu(0), gpu(1)))
    assert back.healthy and back.health_reason == ""
    assert round_(w) == 1


# -- the scheduling round ----------------------------------------------------------------------


def test_a_round_run_twice_admits_a_queued_job_exactly_once(w: World) -> None:
    beat(w, inventory(gpu(0), gpu(1)))
    job_id, _ = submit(w, gpus=1)
    assert round_(w) == 1
    assert round_(w) == 0
    (attempt,) = attempts_of(w, job_id)
    job = read(w, job_id)
    assert job.state == JobState.admitted and job.attempts == 1
    assert attempt.number == 1 and attempt.state == JobState.admitted and attempt.node == NODE
    assert job.placement == attempt.placement
    # the placement holds the GPU: a second one-GPU job gets the other, a third waits
    other, _ = submit(w, gpus=1)
    third, _ = submit(w, gpus=1)
    assert round_(w) == 1
    gpus = {
        json.loads(a.placement)["workers"][0]["gpus"][0]
        for a in attempts_of(w, job_id) + attempts_of(w, other)
    }
    assert gpus == {0, 1}
    assert read(w, third).state == JobState.queued and attempts_of(w, third) == []
    assert_audit_ok(w)


def test_a_crash_mid_apply_leaves_the_job_queued_with_no_attempt(w: World) -> None:
    beat(w, inventory(gpu(0), gpu(1)))
    job_id, _ = submit(w, gpus=1)
    with w.db.session(Scope.everything()) as s:
        entries_before = s.scalar(select(func.count()).select_from(AuditEntry))
    config = policy_config(w.settings.compute.policy)
    now = utcnow()
    with w.db.read_session(Scope.everything()) as s:
        snapshot, index = snapshots.build_snapshot(s, config, now)
    with pytest.raises(RuntimeError, match="power cut"), w.db.session(Scope.everything()) as s:
        assert snapshots.apply_decisions(s, w.audit, decide(snapshot), index, now).admitted == 1
        s.flush()  # the placement reached the database, inside the transaction
        raise RuntimeError("power cut")
    job = read(w, job_id)
    assert job.state == JobState.queued and job.attempts == 0 and job.placement is None
    assert attempts_of(w, job_id) == []
    with w.db.session(Scope.everything()) as s:
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == entries_before
    assert_audit_ok(w)
    # the round is simply redone: one placement, not two
    assert round_(w) == 1
    assert [a.number for a in attempts_of(w, job_id)] == [1]
    assert read(w, job_id).attempts == 1
    assert_audit_ok(w)


# -- the state machine -------------------------------------------------------------------------

ILLEGAL = [
    (JobState.queued, JobState.running),
    (JobState.queued, JobState.succeeded),
    (JobState.queued, JobState.preempted),
    (JobState.admitted, JobState.succeeded),
    (JobState.admitted, JobState.preempted),
    (JobState.running, JobState.admitted),
    (JobState.running, JobState.queued),
    (JobState.succeeded, JobState.queued),
    (JobState.succeeded, JobState.failed),
    (JobState.cancelled, JobState.queued),
    (JobState.cancelled, JobState.running),
    (JobState.failed, JobState.running),
    (JobState.lost, JobState.running),
    (JobState.preempted, JobState.running),
    (JobState.preempted, JobState.failed),
]


@pytest.mark.parametrize(("current", "new"), ILLEGAL, ids=lambda s: str(s))
def test_illegal_transitions_are_refused(current: JobState, new: JobState) -> None:
    with pytest.raises(Conflict, match=f"^job 7 is {current}; it cannot become {new}$"):
        check_transition(7, current, new)


def test_every_state_has_a_rule_and_final_states_lead_nowhere() -> None:
    assert set(ALLOWED) == set(JobState)
    for state in (JobState.succeeded, JobState.cancelled):
        assert ALLOWED[state] == frozenset()
        assert is_final(state, 1, 5)
    for state in (JobState.preempted, JobState.failed, JobState.lost):
        assert ALLOWED[state] == {JobState.queued}  # retried or requeued, never resumed
    assert check_transition(7, "running", JobState.lost) == JobState.lost
    assert is_final("failed", 2, 1) and not is_final("failed", 1, 1)
    assert not is_final("preempted", 9, 0)  # preemption never uses up a retry


def test_a_refused_transition_changes_and_audits_nothing(w: World) -> None:
    beat(w, inventory(gpu(0)))
    job_id, _ = submit(w)
    with w.db.session(Scope.everything()) as s:
        before = s.scalar(select(func.count()).select_from(AuditEntry))
        job = s.get(Job, job_id)
        assert job is not None
        with pytest.raises(Conflict, match=f"job {job_id} is queued; it cannot become succeeded"):
            jobs.transition(s, w.audit, job, JobState.succeeded, "done?")
        assert job.state == JobState.queued
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == before
        jobs.cancel_job(s, w.audit, job, SYSTEM, grace_s=1.0)
        assert job.state == JobState.cancelled
        with pytest.raises(Conflict, match=f"job {job_id} is cancelled already; there is nothing"):
            jobs.cancel_job(s, w.audit, job, SYSTEM, grace_s=1.0)
    assert_audit_ok(w)


# -- budgets at submit -------------------------------------------------------------------------


def bill_gpu_hours(w: World, hours: float) -> None:
    """A finished one-GPU attempt of ``hours`` GPU-hours, ended now (this month)."""
    ended = utcnow()
    with w.db.session(Scope.everything()) as s:
        job = Job(project_id=w.project_id, command='["true"]', state=JobState.succeeded)
        s.add(job)
        s.flush()
        attempt = JobAttempt(
            job_id=job.id,
            project_id=w.project_id,
            number=1,
            node=NODE,
            placement="{}",
            gpu_type="A100",
            gpu_share_milli=1000,
            cpu_milli=1000,
            state=JobState.succeeded,
            admitted_at=ended - dt.timedelta(hours=hours),
            started_at=ended - dt.timedelta(hours=hours),
            ended_at=ended,
        )
        s.add(attempt)
        s.flush()
        usage = ledger.Usage(
            wall_s=hours * 3600,
            cpu_s=60.0,
            gpu_s=hours * 3600,
            energy_kwh=0.4 * hours,
            energy_estimated=True,
            cost=3.0 * hours,
            carbon_g=160.0 * hours,
        )
        assert ledger.bill_attempt(s, attempt, usage)


def set_budget(w: World, **limits: float) -> None:
    with w.db.session(Scope.everything()) as s:
        budgets.set_budget(s, w.project_id, **limits)


def queued_jobs(w: World) -> int:
    with w.db.session(Scope.everything()) as s:
        count = s.scalar(select(func.count()).select_from(Job).where(Job.state == JobState.queued))
        return int(count or 0)


def test_a_spent_gpu_hour_budget_blocks_new_jobs(w: World) -> None:
    beat(w, inventory(gpu(0)))
    set_budget(w, gpu_hours_per_month=1.0)
    bill_gpu_hours(w, 2.0)
    with pytest.raises(
        Conflict,
        match=r"project vision used 2\.0 of 1 GPU-hours this month \(200%\); new jobs are "
        r"refused until next month unless an admin raises the budget",
    ):
        submit(w, gpus=1)
    assert queued_jobs(w) == 0


def test_a_spent_money_budget_blocks_new_jobs(w: World) -> None:
    beat(w, inventory(gpu(0)))
    set_budget(w, money_per_month=5.0)
    bill_gpu_hours(w, 2.0)  # 6.00 spent
    with pytest.raises(Conflict, match=r"spent 6\.00 of 5\.00 USD this month"):
        submit(w)
    set_budget(w, money_per_month=100.0)  # an admin raises it
    job_id, warnings = submit(w)
    assert warnings == [] and read(w, job_id).state == JobState.queued


def test_a_nearly_spent_budget_accepts_with_a_warning(w: World) -> None:
    beat(w, inventory(gpu(0)))
    set_budget(w, gpu_hours_per_month=2.4)
    bill_gpu_hours(w, 2.0)
    job_id, warnings = submit(w, gpus=1)
    assert warnings == [
        "project vision used 2.0 of 2.4 GPU-hours this month (83%), past the 80% warning"
    ]
    assert read(w, job_id).state == JobState.queued


def test_a_project_without_budget_limits_adds_up_no_attempts_at_submit(w: World) -> None:
    """Without a limit no use can block or warn: a submission skips adding up the month's
    attempts (thousands of rows in a busy project); once a limit is set, it adds them up."""
    beat(w, inventory(gpu(0)))
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement)

    event.listen(w.db.engine, "before_cursor_execute", seen)
    try:
        set_budget(w, warn_fraction=0.5)  # a budget row, with no limit
        submit(w)
        assert [s for s in statements if "job_attempts" in s] == []
        set_budget(w, gpu_hours_per_month=10.0)
        submit(w)
        assert [s for s in statements if "job_attempts" in s] != []
    finally:
        event.remove(w.db.engine, "before_cursor_execute", seen)


def test_a_running_attempt_counts_against_the_budget(w: World) -> None:
    beat(w, inventory(gpu(0), gpu(1)))
    set_budget(w, gpu_hours_per_month=1.0)
    job_id, _ = submit(w, gpus=2)
    assert round_(w) == 1
    with w.db.session(Scope.everything()) as s:
        (attempt,) = s.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id))
        attempt.state = JobState.running  # as its agent reports: 2 GPUs for 45 minutes so far
        attempt.started_at = utcnow() - dt.timedelta(minutes=45)
    with pytest.raises(Conflict, match=r"used 1\.5 of 1 GPU-hours"):
        submit(w, gpus=1)


def test_a_pending_launch_carries_one_job_token_minted_once_and_scoped(w: World) -> None:
    beat(w, inventory(gpu(0)))
    job_id, _ = submit(w, gpus=1)
    with w.db.session(Scope.everything()) as s:
        carol = identity.create_user(s, "carol", is_admin=True)  # even a global admin's job
        job = s.get(Job, job_id)
        assert job is not None
        job.user_id = carol.id
    assert round_(w) == 1
    secrets_seen = set()
    for _ in range(3):  # the agent asks again and again until it reports the start
        with w.db.session(Scope.everything()) as s:
            node = nodes.read_node(s, NODE)
            work = nodes.work_for(
                s, node, keyring=w.keyring, settings=w.settings, server_url="http://x"
            )
            (launch,) = work.launch
            secrets_seen.add(launch.env["UNDERLAY_TOKEN"])
    assert len(secrets_seen) == 1
    (secret,) = secrets_seen
    with w.db.session(Scope.everything()) as s:
        rows = s.scalars(select(ApiToken).where(ApiToken.name == f"job-{job_id}-1")).all()
        assert [(t.kind, t.project_id) for t in rows] == [("job", w.project_id)]
        actor = identity.authenticate(s, secret)
        assert not actor.is_admin and actor.roles == {w.project_id: Role.member}
        with pytest.raises(PermissionDenied, match="may not manage accounts"):
            identity.authorize(actor, identity.Action.account)
    (attempt,) = attempts_of(w, job_id)
    with w.db.session(Scope.everything()) as s:
        node = nodes.read_node(s, NODE)
        report = AttemptEnded(state="succeeded", exit_code=0, reason="done", wall_s=1.0)
        nodes.attempt_ended(s, w.audit, node, attempt.id, report, w.settings)
    with (
        w.db.session(Scope.everything()) as s,
        pytest.raises(Unauthenticated, match="revoked"),
    ):
        identity.authenticate(s, secret)


def test_job_secrets_are_stored_sealed_under_the_project_key(w: World) -> None:
    beat(w, inventory(gpu(0)))
    secret = "s3cr3t-" + "v" * 24
    job_id, _ = submit(w, secrets={"API_KEY": secret})
    with w.db.session(Scope.everything()) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.secrets_sealed is not None
        stored = bytes(job.secrets_sealed)
        assert secret.encode() not in stored and b"API_KEY" not in stored
        assert jobs.secrets_of(s, job, w.keyring) == {"API_KEY": secret}
        s.expunge(job)  # a tampered copy, never written back
        job.secrets_sealed = stored[:-1] + bytes([stored[-1] ^ 1])  # one bit flipped
        with pytest.raises(IntegrityFailure, match=f"secrets of job {job_id} failed"):
            jobs.secrets_of(s, job, w.keyring)


def test_an_agent_token_speaks_for_its_node_only(w: World) -> None:
    with w.db.session(Scope.everything()) as s:
        _, secret = identity.create_agent_token(s, NODE)
        actor = identity.authenticate(s, secret)
        project = s.get(Project, w.project_id)
    identity.authorize_agent(actor, NODE)
    with pytest.raises(PermissionDenied, match="only node 'gpu-2'"):
        identity.authorize_agent(actor, "gpu-2")
    for action in identity.Action:
        with pytest.raises(PermissionDenied, match="agent token"):
            identity.authorize(actor, action, project)
    assert actor.scope.project_ids == frozenset()  # it sees no project's rows


def test_the_live_loop_holds_the_room_of_a_preemption_for_its_claimant(w: World) -> None:
    beat(w, inventory(gpu(0), gpu(1)))
    low, _ = submit(w, gpus=2, priority="low")
    assert round_(w) == 1
    with w.db.session(Scope.everything()) as s:  # it has run past the minimum run time
        job = s.get(Job, low)
        assert job is not None
        job.admitted_at = utcnow() - dt.timedelta(seconds=600)
    high, _ = submit(w, gpus=2, priority="high")
    claims: list[Claim] = []
    assert loop.run_round(w.db, w.audit, w.settings, claims=claims) == 0
    assert read(w, low).stop_requested == "preempt"
    assert [c.workload_id for c in claims] == [str(high)]
    # While low is leaving, the next round keeps the claim and says where the room is held.
    assert loop.run_round(w.db, w.audit, w.settings, claims=claims) == 0
    assert [c.workload_id for c in claims] == [str(high)]
    assert f"the room is held for it on node {NODE}" in read(w, high).reason
