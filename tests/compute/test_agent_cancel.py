"""A job cancelled while admitted, before its node's agent launched it, ends cancelled (it
never ran), not lost: the agent sees it among the attempts to stop with no record of its own.
The agent here is driven tick by tick against a live server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import ADMIN_TOKEN, LiveServer
from underlay import identity
from underlay.agent import NodeAgent, local_executor
from underlay.client import Client
from underlay.config import ComputeSettings, Settings
from underlay.store import Scope


@pytest.fixture
def live(settings: Settings) -> Iterator[LiveServer]:
    settings.compute = ComputeSettings(
        local_agent=False, node_name="hand", loop_interval_s=0.1, node_lost_after_s=3600
    )
    settings.admin_token = ADMIN_TOKEN
    server = LiveServer(settings).start()
    try:
        yield server
    finally:
        server.stop()


def _wait_state(admin: Client, job_id: int, state: str) -> None:
    deadline = time.monotonic() + 30
    while (job := admin.read_job("vision", job_id)).state != state:
        assert time.monotonic() < deadline, f"job stayed {job.state}: {job.reason}"
        time.sleep(0.05)


def test_a_job_cancelled_before_its_launch_is_cancelled_not_lost(live: LiveServer) -> None:
    settings = live.settings
    with live.platform.db.session(Scope.everything()) as s:
        _, token = identity.create_agent_token(s, "hand")
    run_dir = settings.home / "agent" / "hand"
    run_dir.mkdir(parents=True)
    with Client(live.url, token) as client, live.client() as admin:
        agent = NodeAgent(client, settings, local_executor(settings, run_dir), "hand", run_dir)
        agent.tick()  # the node registers
        admin.create_project("vision")
        job = admin.submit_job("vision", ["sleep", "60"])
        _wait_state(admin, job.id, "admitted")  # placed on the node; the agent has not ticked
        admin.cancel_job("vision", job.id)
        agent.tick()  # the attempt comes as one to stop, never launched here
        _wait_state(admin, job.id, "cancelled")
        assert admin.read_job("vision", job.id).attempts <= 1


class _CancelledOnStart(Client):
    """A real agent client; the job is cancelled (by the admin) just before its start is
    reported: the race between a cancel and a launch already under way."""

    def __init__(self, url: str, token: str, admin: Client, job_ids: set[int]) -> None:
        super().__init__(url, token)
        self.admin, self.job_ids = admin, job_ids

    def attempt_started(self, node: str, attempt_id: int, pid: int, started: float) -> None:
        for job_id in list(self.job_ids):
            self.admin.cancel_job("vision", job_id)
            self.job_ids.discard(job_id)
        super().attempt_started(node, attempt_id, pid, started)


def test_a_job_cancelled_while_its_launch_is_under_way_stops_and_the_agent_goes_on(
    live: LiveServer,
) -> None:
    """Its start is refused (the job is cancelled): the agent stops the process it launched,
    and the other attempts' stops and ends are still handled (they were not, and a stopped
    replica stayed 'running' for good)."""
    settings = live.settings
    with live.platform.db.session(Scope.everything()) as s:
        _, token = identity.create_agent_token(s, "hand")
    run_dir = settings.home / "agent" / "hand"
    run_dir.mkdir(parents=True)
    with live.client() as admin:
        raced: set[int] = set()
        with _CancelledOnStart(live.url, token, admin, raced) as client:
            agent = NodeAgent(client, settings, local_executor(settings, run_dir), "hand", run_dir)
            agent.tick()  # the node registers
            admin.create_project("vision")
            first = admin.submit_job("vision", ["sleep", "60"])
            _wait_state(admin, first.id, "admitted")
            agent.tick()
            _wait_state(admin, first.id, "running")
            second = admin.submit_job("vision", ["sleep", "60"])
            _wait_state(admin, second.id, "admitted")
            raced.add(second.id)
            agent.tick()  # launches the second; its start is refused: it must not raise
            admin.cancel_job("vision", first.id)
            deadline = time.monotonic() + 30
            while {admin.read_job("vision", j).state for j in (first.id, second.id)} != {
                "cancelled"
            }:
                assert time.monotonic() < deadline, "an attempt was never stopped"
                agent.tick()
                time.sleep(0.1)
            assert not agent.tracked
