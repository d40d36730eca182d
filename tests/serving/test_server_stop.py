"""Replicas do not outlive their server: ``underlay up`` as a real process, stopped with
SIGTERM, SIGINT or SIGKILL, and the replica processes (shims and replicas) checked with psutil.

A politely stopped server stops every replica process its local agent started, and the next
start brings the deployment back with new replicas; a SIGKILLed server leaves its replicas
running, and the next start adopts them (no duplicate serves, none is left behind).
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import psutil
import pytest

import underlay
from tests.cli.conftest import ServerProcess
from tests.conftest import ADMIN_TOKEN
from tests.serving.conftest import PROJECT, X, model, wait_until
from underlay.client import Client

NAME = "stopper"


class _Server(ServerProcess):
    def extra_env(self) -> dict[str, str]:
        return {
            "UNDERLAY_COMPUTE__NODE_NAME": "node-1",
            "UNDERLAY_COMPUTE__LOOP_INTERVAL_S": "0.1",
            "UNDERLAY_COMPUTE__HEARTBEAT_INTERVAL_S": "0.2",
            "UNDERLAY_COMPUTE__GRACE_S": "5",
        }


def _processes(home: Path) -> list[psutil.Process]:
    """Every process started for the deployment: the shims (their status file is under the
    home; one session leader each, and its sandboxed child) and everything below them."""
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        text = " ".join(process.info["cmdline"] or [])
        if str(home) in text and "shim.py" in text:
            found[process.pid] = process
            with contextlib.suppress(psutil.Error):
                found.update((c.pid, c) for c in process.children(recursive=True))
    return [p for p in found.values() if _alive(p)]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _replicas(home: Path) -> set[int]:
    return {
        p.pid for p in _processes(home) if p.cmdline()[1:3] == ["-m", "underlay.serving.replica"]
    }


def _ready(client: Client, replicas: int) -> list[int]:
    def check() -> list[int] | None:
        found = client.read_deployment(PROJECT, NAME)
        ready = [r.job_id for r in found.replicas if r.state == "ready" and r.job_id]
        return ready if found.state == "ready" and len(ready) == replicas else None

    return wait_until(check, f"{replicas} ready replicas", within_s=90)


def _predicts(client: Client) -> None:
    answer = client.predict(PROJECT, NAME, X[:3].tolist())
    assert len(answer["predictions"]) == 3


def _deploy(server: ServerProcess) -> list[int]:
    """Deploy two replicas; the ids of their jobs."""
    with Client(server.url, ADMIN_TOKEN) as c:
        wait_until(c.list_nodes, "the local agent to register", within_s=30)
        c.create_project(PROJECT)
        with underlay.start_run(PROJECT, "churn", client=c) as run:
            run.log_model(model(), "model", input_example=X[:5])
        c.register_model(PROJECT, "churn", run=run.id, path="model")
        c.deploy(PROJECT, NAME, "churn@1", replicas=2)
        jobs = _ready(c, 2)
        _predicts(c)
        return jobs


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_server_stops_its_replicas_and_brings_them_back(
    tmp_path: Path, signum: signal.Signals
) -> None:
    home = tmp_path / "home"
    server = _Server(home).start()
    try:
        before = _deploy(server)
        assert len(_replicas(home)) == 2
        assert server.proc is not None
        server.proc.send_signal(signum)
        assert server.proc.wait(30) in (0, -signum), server.output()  # uvicorn re-raises it
        left = _processes(home)
        assert not left, [p.cmdline() for p in left]

        server = _Server(home, port=server.port).start()  # the deployment comes back
        with Client(server.url, ADMIN_TOKEN) as c:
            after = _ready(c, 2)
            _predicts(c)
            assert not set(after) & set(before)  # new jobs serve the slots
            for job_id in before:
                ended = c.read_job(PROJECT, job_id)
                assert ended.state == "cancelled" and "the server stopped" in ended.reason
        assert len(_replicas(home)) == 2
    finally:
        server.stop()
    left = _processes(home)
    assert not left, [p.cmdline() for p in left]


def test_replicas_of_a_killed_server_are_adopted_by_the_next(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = _Server(home).start()
    try:
        _deploy(server)
        before = _replicas(home)
        assert len(before) == 2
        server.kill()
        assert server.proc is not None
        server.proc.wait(15)
        assert _replicas(home) == before  # orphans, until the next start

        server = _Server(home, port=server.port).start()
        with Client(server.url, ADMIN_TOKEN) as c:
            jobs = _ready(c, 2)
            _predicts(c)
            # adopted: the same jobs and processes serve, no duplicate was started
            assert _replicas(home) == before
            found = c.read_deployment(PROJECT, NAME)
            assert sorted(r.job_id for r in found.replicas) == sorted(jobs)
            assert all(r.restarts == 0 for r in found.replicas)
    finally:
        server.stop()
    left = _processes(home)
    assert not left, [p.cmdline() for p in left]
