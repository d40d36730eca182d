"""Control-plane failover: two ``underlay up`` processes on one PostgreSQL database; the one
that leads the scheduling loop is SIGKILLed while jobs are being submitted to both. The other
takes the leader lock over, and every job whose submission was acknowledged is placed and runs
exactly once; the audit chain verifies."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.cli.conftest import CLI, clean_env
from tests.compute import test_faults
from tests.compute.test_faults import ComputeServer, job_script, runs, wait_until
from tests.conftest import ADMIN_TOKEN, _reset_pg
from underlay.client import Client
from underlay.errors import UnderlayError

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

folder = test_faults.folder  # the jobs' run folder; their processes are killed after the test
LEADS = "scheduler loop is the leader"
BODY = """
while not (FOLDER / "release").exists():
    time.sleep(0.1)
"""


def _server(home: Path, pg_url: str) -> ComputeServer:
    server = ComputeServer(home, local_agent=False, node_lost_after_s=60)
    server.compute["UNDERLAY_STORE__URL"] = pg_url
    return server


def test_a_killed_leader_hands_the_scheduler_over_and_no_job_is_lost_or_doubled(
    tmp_path: Path, folder: Path, pg_url: str
) -> None:
    import subprocess

    _reset_pg(pg_url)
    home = tmp_path / "home"  # one home: the same keys, as servers of one deployment share
    first = _server(home, pg_url).start()
    wait_until("the first server to lead", lambda: LEADS in first.output())
    second = _server(home, pg_url).start()
    agent_env = clean_env(
        UNDERLAY_HOME=str(tmp_path / "agent-home"),
        UNDERLAY_COMPUTE__HEARTBEAT_INTERVAL_S="0.2",
        UNDERLAY_COMPUTE__SANDBOX_SHARE=f'["{folder}"]',
    )
    argv = [*CLI, "agent", "--server", second.url, "--token", ADMIN_TOKEN, "--name", "node-b"]
    with (tmp_path / "agent.log").open("ab") as log:
        agent = subprocess.Popen(argv, env=agent_env, stdout=log, stderr=subprocess.STDOUT)
    acknowledged: dict[int, str] = {}
    try:
        with Client(second.url, ADMIN_TOKEN) as c:
            c.create_project("p")
            wait_until("node-b to register", c.list_nodes)
            assert LEADS not in second.output()  # the first server leads; the second waits

            killed = threading.Event()

            def submit(n: int) -> None:
                # to both servers in turn until the first is killed, then to the second
                for i in range(n):
                    name = f"H{i}"
                    url = first.url if i % 2 and not killed.is_set() else second.url
                    command = job_script(folder, name, BODY)
                    try:
                        with Client(url, ADMIN_TOKEN) as sender:
                            job = sender.submit_job("p", command, cpus=0.1, memory_mib=64)
                    except (UnderlayError, OSError):
                        continue  # not acknowledged: the server died under it
                    acknowledged[job.id] = name

            sender = threading.Thread(target=submit, args=(12,))
            sender.start()
            wait_until("a few submissions", lambda: len(acknowledged) >= 4)
            first.kill()  # SIGKILL: its advisory lock goes with its connection
            killed.set()
            sender.join(120)
            wait_until("the second server to lead", lambda: LEADS in second.output())
            assert len(acknowledged) >= 8

            def all_running() -> bool:
                jobs = [c.read_job("p", job) for job in acknowledged]
                return all(j.state == "running" for j in jobs)

            wait_until("every acknowledged job to run", all_running, within_s=120)
            wait_until(
                "every job process to start",
                lambda: all(runs(folder, name) for name in acknowledged.values()),
            )
            for job, name in acknowledged.items():
                found = c.read_job("p", job)
                assert found.attempts == 1, (job, found.attempts)
                assert runs(folder, name) == 1, name  # launched once, by one leader
            # nothing placed that was never acknowledged, nor placed twice
            engine = create_engine(pg_url)
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT job_id, count(*) FROM job_attempts GROUP BY job_id")
                ).all()
            engine.dispose()
            assert {job for job, _ in rows} <= set(acknowledged) | {
                j.id for j in c.list_jobs("p", limit=1000)
            }
            assert all(count == 1 for _, count in rows), rows
            report = c.verify_audit()
            assert report.ok, report
            (folder / "release").touch()
            for job in acknowledged:
                assert c.wait_job("p", job, timeout_s=60).state == "succeeded"
    finally:
        (folder / "release").touch()
        agent.terminate()
        agent.wait(15)
        second.stop()
        first.kill()
