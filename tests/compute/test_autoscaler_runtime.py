"""The live autoscaler's step on the store, without a server: budgets bound it, and a node
lost to a spot reclaim hands its work back to the queue. SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.compute.test_services import (
    World,
    beat,
    gpu,
    inventory,
    read,
    round_,
    set_budget,
    submit,
)
from tests.compute.test_services import w as w  # the fixture
from underlay.compute import nodes
from underlay.compute.autoscaler.runtime import Autoscaler
from underlay.compute.states import JobState
from underlay.config import ComputeSettings, Settings
from underlay.store import Scope


@pytest.fixture
def settings(settings: Settings) -> Settings:
    group = {"name": "gpu", "accelerator_type": "A100", "accelerators": 1, "max_nodes": 1}
    settings.compute = ComputeSettings.model_validate(
        {"local_agent": False, "autoscaler": {"groups": [group], "idle_s": 60}}
    )
    return settings


@pytest.fixture
def scaler(w: World) -> Iterator[Autoscaler]:
    # nothing listens at this address: a launched agent only retries, and is stopped at close
    scaler = Autoscaler(w.db, w.audit, w.settings, "http://127.0.0.1:9")
    try:
        yield scaler
    finally:
        scaler.close()


def test_a_project_whose_budget_is_spent_launches_nothing(w: World, scaler: Autoscaler) -> None:
    submit(w, gpus=1, gpu_type="A100")  # queues: only the group could host it
    set_budget(w, money_per_month=0.0)
    plan = scaler.step(force=True)
    assert plan is not None and plan.launches == ()
    assert scaler.provider.list() == []
    set_budget(w, money_per_month=100.0)  # an admin raises it
    plan = scaler.step(force=True)
    assert plan is not None and [(x.group, x.count) for x in plan.launches] == [("gpu", 1)]
    assert [i.group for i in scaler.provider.list()] == ["gpu"]


def test_a_reclaimed_node_sends_admitted_and_running_work_back_to_the_queue(w: World) -> None:
    beat(w, inventory(gpu(0), gpu(1), name="spot-1"))
    first, _ = submit(w, gpus=1)
    second, _ = submit(w, gpus=1)
    assert round_(w) == 2
    with w.db.session(Scope.everything()) as s:
        node = nodes.read_node(s, "spot-1")
        attempt_id = nodes._attempts_on(s, "spot-1", [JobState.admitted])[0][0].id
        nodes.attempt_started(s, w.audit, node, attempt_id, pid=1, pid_started=1.0)
    with w.db.session(Scope.everything()) as s:
        requeued = nodes.reclaim_node(s, w.audit, "spot-1", "spot node reclaimed", w.settings)
        assert sorted(requeued) == sorted([first, second])
        assert nodes.read_node(s, "spot-1").status == "lost"
    for job_id in (first, second):
        job = read(w, job_id)
        assert job.state == JobState.queued and job.attempts == 1
        assert "spot node reclaimed" in job.reason
