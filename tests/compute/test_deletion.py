"""Deleting a project leaves nothing another tenant could inherit (issue 7, part 2).

The three sequences the security review saw, on a real server with the local node agent and
real processes, on SQLite and PostgreSQL: a deleted project's job logs showing up under the
next job, its alerts under the next project, and a delete during a run leaving the agent
failing every tick and the next tenant's job ``lost``. ``projects delete`` runs as the CLI.
"""

from __future__ import annotations

import logging
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.cli.conftest import clean_env, run_cli
from tests.conftest import LiveServer
from underlay.client import Client
from underlay.compute import alerts
from underlay.compute.models import Alert, Job, JobAttempt, QuotaRow
from underlay.config import ComputeSettings, Settings, SimulatedAccelerator
from underlay.errors import NotFound
from underlay.store import Scope
from underlay.store.models import (
    ApiToken,
    Blob,
    DataKey,
    LineageEdge,
    Membership,
    Project,
)

PY = sys.executable


def script(body: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(body)]


@pytest.fixture
def settings(settings: Settings) -> Settings:  # type: ignore[override]
    settings.compute = ComputeSettings(
        simulated_accelerators=[
            SimulatedAccelerator(type="A100", count=2, idle_watts=50, busy_watts=400)
        ],
        node_name="node-1",
        loop_interval_s=0.1,
        heartbeat_interval_s=0.2,
        grace_s=3.0,
    )
    return settings


@pytest.fixture
def ul(server: LiveServer) -> Iterator[Client]:
    with server.client() as c:
        c.create_project("vision")
        until(lambda: bool(c.list_nodes()), "the local agent registers")
        yield c
        for project in c.list_projects():  # leave no job process behind
            for job in c.list_jobs(project.name, state=["queued", "admitted", "running"]):
                c.cancel_job(project.name, job.id)
                c.wait_job(project.name, job.id, timeout_s=30)


def until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def delete_with_cli(server: LiveServer, project: str) -> None:
    env = clean_env(UNDERLAY_URL=server.url, UNDERLAY_TOKEN=server.admin_token)
    result = run_cli("projects", "delete", project, "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def log_of(ul: Client, project: str, job_id: int) -> str:
    return b"".join(ul.job_logs(project, job_id)).decode()


def test_a_new_job_after_a_delete_gets_a_new_id_and_none_of_the_old_output(
    server: LiveServer, ul: Client
) -> None:
    home = server.settings.home
    old = ul.submit_job("vision", script("print('secret output of vision')"))
    assert ul.wait_job("vision", old.id, timeout_s=60).state == "succeeded"
    assert "secret output of vision" in log_of(ul, "vision", old.id)
    ul.upload_blob("vision", b"vision's data")
    ul.set_quota("vision", "A100", 1)
    ul.set_budget("vision", gpu_hours_per_month=10.0)
    ul.add_lineage("vision", ("blob", "x"), "used_by", ("run", "1"))
    old_project = ul.read_project("vision").id
    blob_folder = Path(server.settings.blob_url) / str(old_project)
    assert blob_folder.exists() and (home / "logs" / f"job-{old.id}").exists()

    delete_with_cli(server, "vision")

    with pytest.raises(NotFound, match="vision"):
        ul.list_jobs("vision")
    ul.create_project("vision")  # the same name: it inherits nothing
    assert ul.read_project("vision").id > old_project
    new = ul.submit_job("vision", script("print('new tenant')"))
    assert new.id > old.id
    assert ul.wait_job("vision", new.id, timeout_s=60).state == "succeeded"
    log = log_of(ul, "vision", new.id)
    assert "new tenant" in log and "secret output" not in log
    assert ul.list_jobs("vision") == [ul.read_job("vision", new.id)]
    assert ul.list_quotas("vision") == [] and ul.list_blobs("vision") == []
    assert [r.attempts for r in ul.usage(project="vision")] == [1]
    assert ul.budget("vision")["state"] == "ok"
    assert not blob_folder.exists() and not (home / "logs" / f"job-{old.id}").exists()
    with server.platform.db.session(Scope.everything()) as s:
        assert s.scalar(select(func.count()).select_from(QuotaRow)) == 0
        assert s.scalars(select(JobAttempt.job_id)).all() == [new.id]
        for table in (DataKey, Membership, Blob, LineageEdge):
            left = select(func.count()).select_from(table).where(table.project_id == old_project)
            assert s.scalar(left) == 0, table.__tablename__


def test_a_delete_that_rolls_back_removes_no_file(server: LiveServer, ul: Client) -> None:
    job = ul.submit_job("vision", script("print('kept')"))
    assert ul.wait_job("vision", job.id, timeout_s=60).state == "succeeded"
    ul.upload_blob("vision", b"kept too")
    project_id = ul.read_project("vision").id
    platform = server.platform
    with (
        pytest.raises(RuntimeError, match="changed my mind"),
        platform.db.session(Scope.everything()) as s,
    ):
        platform.delete_project(s, s.get_one(Project, project_id))
        s.flush()
        raise RuntimeError("changed my mind")
    assert ul.read_project("vision").id == project_id
    assert "kept" in log_of(ul, "vision", job.id)
    (blob,) = ul.list_blobs("vision")
    assert ul.download_blob("vision", blob.digest) == b"kept too"


def test_an_alert_of_a_deleted_project_never_appears_in_a_later_one(
    server: LiveServer, ul: Client
) -> None:
    db = server.platform.db
    old_project = ul.read_project("vision").id
    with db.session(Scope.projects(old_project)) as s:
        alerts.record_alert(
            s, "idle_gpu", "vision's job idles", project_id=old_project, subject="node-1/gpu0"
        )
    assert [a.message for a in ul.list_alerts(project="vision")] == ["vision's job idles"]

    delete_with_cli(server, "vision")

    for name in ("speech", "vision"):
        ul.create_project(name)
        assert ul.read_project(name).id > old_project
        assert ul.list_alerts(project=name) == []
    assert ul.list_alerts() == []
    with db.session(Scope.everything()) as s:
        assert s.scalar(select(func.count()).select_from(Alert)) == 0


def test_deleting_a_project_while_its_job_runs_stops_it_and_the_next_job_runs(
    server: LiveServer, ul: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The job is sandboxed (its /tmp is its own, its pids are of its own namespace): it leaves
    # its marker in its working folder, and the test watches its shim's pid from outside.
    body = """
        import os, signal, sys, time
        def bye(*_):
            open("stopped", "w").write("stopped")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        print("pid", os.getpid(), flush=True)
        time.sleep(120)
    """
    job = ul.submit_job("vision", script(body), gpus=1)
    until(lambda: "pid " in log_of(ul, "vision", job.id), "the job runs")
    marker = server.settings.home / "agent" / "node-1" / f"job-{job.id}-1" / "stopped"
    with server.platform.db.session(Scope.everything()) as s:
        (pid,) = s.scalars(select(JobAttempt.pid).where(JobAttempt.job_id == job.id))
        assert pid is not None
    with server.platform.db.session(Scope.everything()) as s:
        (token,) = s.scalars(
            select(ApiToken.name)
            .where(ApiToken.revoked_at.is_(None))
            .where(ApiToken.name == f"job-{job.id}-1")
        )
    caplog.set_level(logging.INFO, logger="underlay.agent.node")
    caplog.clear()
    followed: list[object] = []
    follower = threading.Thread(target=_follow, args=(server, job.id, followed), daemon=True)
    follower.start()

    delete_with_cli(server, "vision")

    until(marker.exists, "the job's process got SIGTERM")
    until(lambda: not _alive(pid), "the job's process is gone")
    follower.join(30)
    assert not follower.is_alive() and len(followed) == 1
    assert isinstance(followed[0], str) and "pid " in followed[0]  # the stream ended cleanly
    ul.create_project("speech")
    nxt = ul.submit_job("speech", script("print('next tenant ran')"), gpus=1)
    assert nxt.id > job.id
    done = ul.wait_job("speech", nxt.id, timeout_s=60)
    assert done.state == "succeeded", done.reason
    assert "next tenant ran" in log_of(ul, "speech", nxt.id)
    beat = ul.list_nodes()[0].heartbeat_at
    until(lambda: ul.list_nodes()[0].heartbeat_at > beat, "the agent ticks again")
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert failures == [], [r.getMessage() for r in failures]
    assert not server.platform.settings.home.joinpath("logs", f"job-{job.id}").exists()
    with server.platform.db.session(Scope.everything()) as s:
        # a job token belongs to its project: it went with it
        assert s.scalars(select(ApiToken).where(ApiToken.name == token)).all() == []
        assert s.scalars(select(Job.id)).all() == [nxt.id]
        assert s.scalars(select(Project.name)).all() == ["speech"]


def _follow(server: LiveServer, job_id: int, out: list[object]) -> None:
    """``jobs logs --follow`` on the job that is about to be deleted with its project."""
    try:
        with server.client() as c:
            out.append(b"".join(c.job_logs("vision", job_id, follow=True)).decode())
    except Exception as exc:  # what the test reports if the stream breaks
        out.append(exc)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; its parent reaps it when it polls
