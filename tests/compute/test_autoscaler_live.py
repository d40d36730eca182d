"""The autoscaler end to end: a real server, node groups of real ``underlay agent`` processes
(the local-process provider, accelerators simulated), real jobs.

A group scales up when jobs queue and back down when its nodes are idle; a spot node that is
reclaimed has its job requeued (without using up a retry) and run again on a new node.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psutil
import pytest

from tests.conftest import LiveServer
from underlay.client import Client
from underlay.compute.autoscaler.local import LocalProcessProvider
from underlay.config import ComputeSettings, Settings
from underlay.errors import InvalidInput

T = TypeVar("T")
pytestmark = pytest.mark.slow


def script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def groups_settings(groups: list[dict[str, Any]]) -> ComputeSettings:
    return ComputeSettings.model_validate(
        {
            "local_agent": False,
            "loop_interval_s": 0.1,
            "heartbeat_interval_s": 0.2,
            "grace_s": 2.0,
            "autoscaler": {"groups": groups, "interval_s": 0.2, "idle_s": 1.0},
        }
    )


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:  # type: ignore[override]
    settings.compute = groups_settings(request.param)
    return settings


@pytest.fixture
def ul(server: LiveServer) -> Iterator[Client]:
    with server.client() as c:
        c.create_project("vision")
        yield c
        for job in c.list_jobs("vision", state=["queued", "admitted", "running"]):
            c.cancel_job("vision", job.id)


def provider_of(server: LiveServer) -> LocalProcessProvider:
    app: Any = server._server.config.app
    scaler = _wait_until(lambda: app.state.compute.loop.autoscaler, "the autoscaler to lead")
    provider = scaler.provider
    assert isinstance(provider, LocalProcessProvider)
    return provider


GPU_GROUP = [{"name": "gpu", "accelerator_type": "A100", "accelerators": 1, "max_nodes": 2}]
SPOT_GROUP = [
    {"name": "spot", "accelerator_type": "A100", "accelerators": 1, "max_nodes": 1, "spot": True}
]


@pytest.mark.parametrize("settings", [GPU_GROUP], indirect=True)
def test_a_node_group_scales_up_when_jobs_queue_and_down_when_idle(
    server: LiveServer, ul: Client
) -> None:
    assert ul.list_nodes() == []
    with pytest.raises(InvalidInput, match="no node has accelerator type 'H100'"):
        ul.submit_job("vision", script("pass"), gpus=1, gpu_type="H100")  # no group has one
    body = "import time; print('working', flush=True); time.sleep(600)"
    jobs = [ul.submit_job("vision", script(body), gpus=1, gpu_type="A100") for _ in range(3)]
    # two run at once, each on a node of its own; the third waits: the group's max is 2
    running = _wait_until(lambda: _running(ul, jobs), "two jobs to run", within_s=120)
    assert len({j.node for j in running}) == 2
    nodes = ul.list_nodes()
    assert all(n.name.startswith("gpu-") and n.simulated for n in nodes)
    assert all("underlay.io/node-group=gpu" in n.labels for n in nodes)
    time.sleep(0.5)  # several autoscaler steps: the third job launches no third node
    assert len(ul.list_nodes()) == 2
    assert ul.read_job("vision", jobs[2].id).state == "queued"
    for j in jobs:
        ul.cancel_job("vision", j.id)
    for j in jobs:
        assert ul.wait_job("vision", j.id, timeout_s=60).state == "cancelled"
    _wait_until(lambda: ul.list_nodes() == [], "the idle nodes to be terminated", within_s=60)
    entries = [e for e in ul.list_audit(limit=1000) if e.actor == "autoscaler"]
    launches = [json.loads(e.detail) for e in entries if e.action == "node.launch"]
    terminations = [json.loads(e.detail) for e in entries if e.action == "node.terminate"]
    assert len(launches) == 2 and len(terminations) == 2
    assert any(f"({jobs[0].id}" in d["reason"] for d in launches)  # the jobs that need it
    assert all(d["reason"].startswith("idle for") for d in terminations)
    assert provider_of(server).list() == []


@pytest.mark.parametrize("settings", [GPU_GROUP], indirect=True)
def test_local_nodes_end_with_their_server(server: LiveServer) -> None:
    with server.client() as ul:
        ul.create_project("vision")
        job = ul.submit_job("vision", script("import time; time.sleep(600)"), gpus=1)
        _wait_until(lambda: ul.read_job("vision", job.id).state == "running", "the job to run")
    provider = provider_of(server)
    procs = [psutil.Process(p.pid) for p in provider._procs.values()]
    assert len(procs) == 1
    server.stop()
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs)


@pytest.mark.parametrize("settings", [SPOT_GROUP], indirect=True)
def test_a_reclaimed_spot_node_requeues_its_job_which_runs_again(
    server: LiveServer, ul: Client
) -> None:
    body = """
        import os, time
        print("attempt", os.environ["UNDERLAY_ATTEMPT"], flush=True)
        if os.environ["UNDERLAY_ATTEMPT"] == "1":
            time.sleep(600)
    """
    job = ul.submit_job("vision", script(body), gpus=1, preemptible=True)
    _wait_until(lambda: ul.read_job("vision", job.id).state == "running", "the job to run")
    provider = provider_of(server)
    (first,) = provider.list()
    provider.reclaim(first.id)
    done = ul.wait_job("vision", job.id, timeout_s=120)
    assert done.state == "succeeded" and done.attempts == 2, done.reason
    assert done.max_retries == 0  # the reclaim used up no retry
    assert done.node != first.node
    entries = [e for e in ul.list_audit(limit=1000) if e.actor == "autoscaler"]
    reclaimed = [e for e in entries if e.action == "node.reclaimed"]
    assert reclaimed and reclaimed[0].resource == f"node:{first.node}"
    assert json.loads(reclaimed[0].detail) == {"requeued_jobs": [job.id]}


@pytest.mark.parametrize("settings", [SPOT_GROUP], indirect=True)
def test_non_preemptible_work_waits_rather_than_run_on_spot(server: LiveServer, ul: Client) -> None:
    job = ul.submit_job("vision", script("pass"), gpus=1, preemptible=False)
    reason = _wait_until(
        lambda: ul.read_job("vision", job.id).reason, "the job to get a reason", within_s=30
    )
    assert "underlay.io/spot=false" in reason
    time.sleep(1.0)  # several autoscaler steps
    assert ul.list_nodes() == [] and provider_of(server).list() == []
    assert ul.read_job("vision", job.id).state == "queued"


def _running(ul: Client, jobs: list[Any]) -> list[Any] | None:
    now = [ul.read_job("vision", j.id) for j in jobs]
    running = [j for j in now if j.state == "running"]
    return running if len(running) == 2 else None


def _wait_until(condition: Callable[[], T | None], what: str, within_s: float = 60) -> T:
    deadline = time.monotonic() + within_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value
