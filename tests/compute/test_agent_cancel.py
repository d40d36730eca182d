"""A job cancelled while admitted, before its node's agent launched it, ends cancelled (it
never ran), not lost: the agent sees it among the attempts to stop with no record of its own.
The agent here is driven tick by tick against a live server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import select

from tests.conftest import ADMIN_TOKEN, LiveServer
from underlay import identity
from underlay.agent import NodeAgent, local_executor
from underlay.client import Client
from underlay.compute.models import Job, JobAttempt
from underlay.compute.schemas import JobRead
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


@contextmanager
def _agent_and_job(live: LiveServer) -> Iterator[tuple[NodeAgent, Client, JobRead]]:
    """A node agent driven tick by tick (registered), an admin client, and a job of 60 s
    submitted to project "vision" (not yet placed)."""
    settings = live.settings
    with live.platform.db.session(Scope.everything()) as s:
        _, token = identity.create_agent_token(s, "hand")
    run_dir = settings.home / "agent" / "hand"
    run_dir.mkdir(parents=True)
    with Client(live.url, token) as client, live.client() as admin:
        agent = NodeAgent(client, settings, local_executor(settings, run_dir), "hand", run_dir)
        agent.tick()  # the node registers
        admin.create_project("vision")
        yield agent, admin, admin.submit_job("vision", ["sleep", "60"])


def test_a_job_cancelled_before_its_launch_is_cancelled_not_lost(live: LiveServer) -> None:
    with _agent_and_job(live) as (agent, admin, job):
        _wait_state(admin, job.id, "admitted")  # placed on the node; the agent has not ticked
        admin.cancel_job("vision", job.id)
        agent.tick()  # the attempt comes as one to stop, never launched here
        _wait_state(admin, job.id, "cancelled")
        assert admin.read_job("vision", job.id).attempts <= 1


def _attempt_state(live: LiveServer, job_id: int) -> str:
    with live.platform.db.session(Scope.everything()) as s:
        attempt = s.scalar(select(JobAttempt).where(JobAttempt.job_id == job_id))
        assert attempt is not None
        return attempt.state


@pytest.mark.parametrize("started", [False, True], ids=["admitted", "running"])
def test_an_attempt_of_a_job_that_ended_without_it_is_stopped_and_closed(
    live: LiveServer, started: bool
) -> None:
    """A job marked cancelled while its attempt was admitted or running (the record a cancel
    racing a placement left, before the cancel locked the job's row): its node never launches
    the attempt, stops it at once if it runs, and the attempt closes without touching the
    job. Its start or end used to be refused on every tick, and the attempt never closed."""
    with _agent_and_job(live) as (agent, admin, job):
        _wait_state(admin, job.id, "admitted")
        if started:
            agent.tick()
            _wait_state(admin, job.id, "running")
        with live.platform.db.session(Scope.everything()) as s:
            row = s.get(Job, job.id)
            assert row is not None
            row.state, row.reason = "cancelled", "cancelled by a racing cancel"
        deadline = time.monotonic() + 30
        while _attempt_state(live, job.id) != "cancelled":
            assert time.monotonic() < deadline, "the attempt never closed"
            agent.tick()
            time.sleep(0.1)
        assert not agent.tracked
        read = admin.read_job("vision", job.id)
        assert (read.state, read.reason) == ("cancelled", "cancelled by a racing cancel")
        assert read.attempts == 1
