"""Jobs end to end on a real server: the live loop, the local agent and real processes.

The node declares simulated A100s (marked simulated everywhere); everything else is real:
HTTP, the scheduler's policy, process groups, signals, logs and the ledger.
"""

from __future__ import annotations

import hashlib
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from tests.conftest import LiveServer
from underlay.client import Client
from underlay.config import ComputeSettings, Settings, SimulatedAccelerator
from underlay.errors import InvalidInput, NotFound

PY = sys.executable
T = TypeVar("T")


def script(body: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(body)]


@pytest.fixture
def settings(settings: Settings) -> Settings:  # type: ignore[override]
    settings.compute = ComputeSettings(
        simulated_accelerators=[
            SimulatedAccelerator(type="A100", count=2, idle_watts=50, busy_watts=400)
        ],
        node_name="node-1",
        node_labels={"zone": "a", "gpu": "a100"},
        loop_interval_s=0.1,
        heartbeat_interval_s=0.2,
        grace_s=3.0,
        idle_gpu_after_s=1.0,
    )
    return settings


@pytest.fixture
def ul(server: LiveServer) -> Iterator[Client]:
    with server.client() as c:
        c.create_project("vision")
        c.create_project("speech")
        _wait_until(c.list_nodes, "the local agent to register", within_s=20)
        yield c
        for project in ("vision", "speech"):  # leave no job process behind
            for job in c.list_jobs(project, state=["queued", "admitted", "running"]):
                c.cancel_job(project, job.id)
                c.wait_job(project, job.id, timeout_s=30)


def test_node_shows_simulated_accelerators(ul: Client) -> None:
    (node,) = ul.list_nodes()
    assert node.name == "node-1" and node.status == "ready"
    assert [(a.type, a.simulated) for a in node.accelerators] == [("A100", True)] * 2


def test_job_runs_and_is_billed(ul: Client) -> None:
    job = ul.submit_job("vision", script("print('hello from a job')"), gpus=1)
    done = ul.wait_job("vision", job.id, timeout_s=60)
    assert done.state == "succeeded", done.reason
    assert done.exit_code == 0
    log = b"".join(ul.job_logs("vision", job.id)).decode()
    assert "hello from a job" in log
    (row,) = ul.usage(project="vision")
    assert row.jobs == 1 and row.attempts == 1
    assert row.gpu_hours > 0 and row.energy_kwh > 0 and row.cost > 0 and row.carbon_kg > 0
    assert row.energy_estimated


def test_job_environment_has_identity_and_secrets(ul: Client) -> None:
    body = """
        import os
        from underlay.client import Client
        with Client.from_env() as c:
            print("me", c.me().name, "job", os.environ["UNDERLAY_JOB_ID"])
        import hashlib
        print("secret", hashlib.sha256(os.environ["API_KEY"].encode()).hexdigest()[:16])
        print("gpus", os.environ["CUDA_VISIBLE_DEVICES"] != "")
    """
    job = ul.submit_job("vision", script(body), gpus=1, secrets={"API_KEY": "s3cr3t-value"})
    assert ul.wait_job("vision", job.id, timeout_s=60).state == "succeeded"
    log = b"".join(ul.job_logs("vision", job.id)).decode()
    assert f"me admin job {job.id}" in log
    expected = hashlib.sha256(b"s3cr3t-value").hexdigest()[:16]
    assert f"secret {expected}" in log and "gpus True" in log
    assert "s3cr3t-value" not in log


def test_failure_is_retried_then_fails(ul: Client) -> None:
    job = ul.submit_job("vision", script("import sys; sys.exit(3)"), max_retries=1)
    done = ul.wait_job("vision", job.id, timeout_s=60)
    assert done.state == "failed" and done.attempts == 2
    assert "code 3" in done.reason
    (row,) = ul.usage(project="vision")
    assert row.attempts == 2  # each attempt billed once


def test_max_runtime_ends_the_job(ul: Client) -> None:
    job = ul.submit_job("vision", script("import time; time.sleep(60)"), max_runtime_s=1)
    done = ul.wait_job("vision", job.id, timeout_s=60)
    assert done.state == "failed" and "max run time" in done.reason


def test_cancel_sends_sigterm_first(ul: Client) -> None:
    body = """
        import signal, sys, time
        def bye(*_):
            print("got SIGTERM", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        print("started", flush=True)
        time.sleep(60)
    """
    job = ul.submit_job("vision", script(body))
    _wait_for_log(ul, "vision", job.id, "started")
    ul.cancel_job("vision", job.id)
    done = ul.wait_job("vision", job.id, timeout_s=60)
    assert done.state == "cancelled"
    assert "got SIGTERM" in b"".join(ul.job_logs("vision", job.id)).decode()


def test_unsatisfiable_requests_are_refused_with_the_reason(ul: Client) -> None:
    with pytest.raises(InvalidInput, match="largest node has 2"):
        ul.submit_job("vision", ["true"], gpus=9)
    with pytest.raises(InvalidInput, match="no node has accelerator type 'H100'"):
        ul.submit_job("vision", ["true"], gpus=1, gpu_type="H100")
    with pytest.raises(InvalidInput, match="gpu_fraction"):
        ul.submit_job("vision", ["true"], gpu_fraction=1.5)
    with pytest.raises(InvalidInput, match="cpus"):
        ul.submit_job("vision", ["true"], cpus=-1)
    with pytest.raises(InvalidInput, match="gang"):
        ul.submit_job("vision", ["true"], gang=4)
    with pytest.raises(NotFound, match="project 'nowhere' not found"):
        ul.submit_job("nowhere", ["true"])
    assert ul.list_jobs("vision") == []


def test_borrowed_job_is_preempted_when_the_owner_claims_its_quota(ul: Client) -> None:
    ul.set_quota("vision", "A100", 2)
    ul.set_quota("speech", "A100", 0)
    borrower_body = """
        import os, signal, sys, time
        if os.environ["UNDERLAY_ATTEMPT"] == "1":
            def bye(*_):
                print("speech got SIGTERM", flush=True)
                sys.exit(143)
            signal.signal(signal.SIGTERM, bye)
            print("speech running on borrowed GPUs", flush=True)
            time.sleep(120)
        print("speech finished on attempt", os.environ["UNDERLAY_ATTEMPT"])
    """
    borrower = ul.submit_job("speech", script(borrower_body), gpus=2, gpu_type="A100")
    _wait_for_log(ul, "speech", borrower.id, "borrowed GPUs")
    assert ul.read_job("speech", borrower.id).borrowed
    owner = ul.submit_job("vision", script("print('vision claims its quota')"), gpus=2)
    assert ul.wait_job("vision", owner.id, timeout_s=60).state == "succeeded"
    done = ul.wait_job("speech", borrower.id, timeout_s=60)
    assert done.state == "succeeded" and done.attempts == 2
    log = b"".join(ul.job_logs("speech", borrower.id)).decode()
    assert "speech got SIGTERM" in log and "finished on attempt 2" in log
    usage = {row.key: row for row in ul.usage(group_by="project")}
    assert usage["speech"].attempts == 2 and usage["vision"].attempts == 1
    transitions = [
        e.action for e in ul.list_audit(limit=1000) if e.resource.endswith(f"job:{borrower.id}")
    ]
    assert "job.preempt" in transitions and "job.preempted" in transitions


def test_idle_gpu_is_flagged_and_the_flag_clears_when_the_gpu_is_released(ul: Client) -> None:
    # the job holds its GPU idle until it is cancelled: no race with a job that ends early
    job = ul.submit_job("vision", script("import time; time.sleep(300)"), gpus=1)
    alerts = _wait_until(lambda: ul.list_alerts(project="vision"), "an idle-GPU alert")
    assert f"job {job.id} holds GPU" in alerts[0].message
    assert alerts[0].kind == "idle_gpu" and alerts[0].job_id == job.id
    ul.cancel_job("vision", job.id)
    assert ul.wait_job("vision", job.id, timeout_s=60).state == "cancelled"
    _wait_until(lambda: not ul.list_alerts(project="vision"), "the alert to clear itself")


def test_a_selector_no_node_matches_stays_pending_and_a_matching_one_runs(ul: Client) -> None:
    assert ul.list_nodes()[0].labels == ["gpu=a100", "zone=a"]
    stuck = ul.submit_job("vision", script("pass"), node_selector=["gpu=h100"])
    assert stuck.node_selector == ["gpu=h100"] and stuck.preemptible
    reason = _wait_until(
        lambda: ul.read_job("vision", stuck.id).reason, "the pending job to get a reason"
    )
    assert ul.read_job("vision", stuck.id).state == "queued"
    assert reason == "no node with labels gpu=h100"
    job = ul.submit_job(
        "vision",
        script("print('placed by its labels')"),
        gpu_fraction=0.5,
        node_selector=["zone=a", "gpu=a100"],
        app="web",
        max_per_node=1,
        preemptible=False,
    )
    assert (job.app, job.max_per_node, job.preemptible) == ("web", 1, False)
    done = ul.wait_job("vision", job.id, timeout_s=60)
    assert done.state == "succeeded", done.reason
    assert ul.read_job("vision", stuck.id).state == "queued"


def test_a_malformed_selector_is_refused(ul: Client) -> None:
    with pytest.raises(InvalidInput, match="is not key=value"):
        ul.submit_job("vision", script("pass"), node_selector=["zone"])


def _wait_until(condition: Callable[[], T], what: str, within_s: float = 60) -> T:
    """``condition()``'s first truthy value, polled until ``within_s`` runs out."""
    deadline = time.monotonic() + within_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _wait_for_log(ul: Client, project: str, job_id: int, text: str) -> None:
    for _ in range(300):
        if text in b"".join(ul.job_logs(project, job_id)).decode():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in the log of job {job_id}")
