"""Faults of live compute, on real processes: the server killed while jobs run, a node that
stops answering, and a node agent cut off from the server while its job runs on.

``underlay up`` runs as a child process with two simulated A100s on its built-in node agent;
the jobs are real process trees under the local executor's shim, so SIGKILL of the server
leaves them running exactly as a power cut of the control plane would. Each job appends a
line to its own file per run, which is how "nothing ran twice" is counted. SQLite only: the
reconciliation under test is the agent's and the executor's, not the database's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.cli.conftest import CLI, ServerProcess, clean_env, run_cli
from tests.conftest import ADMIN_TOKEN
from underlay.client import Client
from underlay.compute.schemas import AgentWork, AttemptEnded, JobRead

pytestmark = pytest.mark.slow
PY = sys.executable


class ComputeServer(ServerProcess):
    """``underlay up`` on ``home`` with compute settings given as ``UNDERLAY_COMPUTE__*``."""

    def __init__(self, home: Path, *, port: int | None = None, **compute: object) -> None:
        super().__init__(home, port=port)
        # Jobs are sandboxed (a private /tmp): the test's run folders beside the home are
        # shared into them read-write, the way an operator shares a scratch folder.
        shared = [str(p) for p in home.parent.glob("runs*") if p.is_dir()]
        settings = {**COMPUTE, "sandbox_share": shared, **compute}
        self.compute = {
            f"UNDERLAY_COMPUTE__{k.upper()}": _env_value(v) for k, v in settings.items()
        }

    def extra_env(self) -> dict[str, str]:
        return self.compute

    def start(self, ready_within_s: float = 60) -> ComputeServer:
        super().start(ready_within_s)
        return self

    def __enter__(self) -> ComputeServer:
        return self.start()

    def client(self) -> Client:
        return Client(self.url, ADMIN_TOKEN)


def _env_value(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


COMPUTE: dict[str, object] = {
    "simulated_accelerators": [{"type": "A100", "count": 2}],
    "node_name": "node-1",
    "loop_interval_s": 0.1,
    "heartbeat_interval_s": 0.2,
    "grace_s": 2.0,
}


def processes_with(marker: str) -> list[psutil.Process]:
    """Live processes whose command line holds ``marker`` (a job and its shim), shims first."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        if marker in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return sorted(found, key=lambda p: "shim.py" not in " ".join(p.info["cmdline"] or ()))


def gone(marker: str) -> bool:
    return not processes_with(marker)


def kill_all(marker: str) -> None:
    for process in processes_with(marker):
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue


def wait_until(what: str, check: Callable[[], Any], within_s: float = 60) -> Any:
    deadline = time.monotonic() + within_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what} did not happen within {within_s} s"
        time.sleep(0.1)
    return value


def log_of(c: Client, job: int) -> str:
    return b"".join(c.job_logs("p", job)).decode(errors="replace")


def _wait_for_log(c: Client, job: int, text: str) -> None:
    wait_until(f"{text.strip()!r} in the log of job {job}", lambda: text in log_of(c, job))


def runs(folder: Path, name: str) -> int:
    path = folder / f"{name}.runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def job_script(folder: Path, name: str, body: str) -> list[str]:
    """A job that records each run in ``folder/<name>.runs`` then runs ``body``; its command
    line carries the marker ``fault-job-<name>-<folder>`` so the test can find its processes."""
    marker = f"fault-job-{name}-{folder.name}"
    head = f"""
        # {marker}
        import os, sys, time
        from pathlib import Path
        FOLDER = Path({str(folder)!r})
        with (FOLDER / "{name}.runs").open("a") as runs:
            runs.write(os.environ["UNDERLAY_ATTEMPT"] + "\\n")
        print("{name} started attempt", os.environ["UNDERLAY_ATTEMPT"], flush=True)
    """
    return [PY, "-c", textwrap.dedent(head) + textwrap.dedent(body)]


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """Where the jobs count their runs; every job process of the test is killed at the end."""
    runs_folder = tmp_path / f"runs{os.getpid()}x{time.monotonic_ns()}"
    runs_folder.mkdir()
    runs_folder.chmod(0o777)  # the jobs run as an unprivileged uid of their project
    yield runs_folder
    kill_all(f"-{runs_folder.name}")


def audit_of(c: Client, job: int) -> list[tuple[str, dict[str, Any]]]:
    entries = c.list_audit(limit=1000)
    return [
        (e.action, json.loads(e.detail) if e.detail else {})
        for e in sorted(entries, key=lambda e: e.seq)
        if e.resource.endswith(f"/job:{job}")
    ]


# -- the server killed while jobs run ---------------------------------------------------------


def test_jobs_survive_a_server_kill_alive_ones_adopted_gone_ones_lost_and_retried(
    tmp_path: Path, folder: Path
) -> None:
    home = tmp_path / "home"
    release_a, release_c = folder / "release-a", folder / "release-c"
    waits_for = "while not Path({!r}).exists():\n    time.sleep(0.05)\n"
    a_body = waits_for.format(str(release_a)) + 'print("A-MARKER finished", flush=True)\n'
    b_body = """
        if os.environ["UNDERLAY_ATTEMPT"] == "1":
            time.sleep(600)
        print("B-MARKER second attempt finished", flush=True)
    """
    c_body = waits_for.format(str(release_c)) + 'print("C-MARKER finished", flush=True)\n'
    first = ComputeServer(home, node_lost_after_s=120).start()
    try:
        with first.client() as c:
            c.create_project("p")
            wait_until("the local node to register", c.list_nodes)
            # half a CPU each: all three fit on a two-core machine
            a = c.submit_job("p", job_script(folder, "A", a_body), gpus=1, cpus=0.5).id
            b = c.submit_job("p", job_script(folder, "B", b_body), cpus=0.5, max_retries=1).id
            cj = c.submit_job("p", job_script(folder, "C", c_body), gpus=1, cpus=0.5).id
            for job, name in ((a, "A"), (b, "B"), (cj, "C")):
                _wait_for_log(c, job, f"{name} started attempt 1\n")
                assert c.read_job("p", job).state == "running"
    finally:
        first.kill()  # SIGKILL: no clean-up, like a power cut

    # while the server is down: B's whole tree dies (its shim too), C finishes, A runs on
    b_marker, c_marker = f"fault-job-B-{folder.name}", f"fault-job-C-{folder.name}"
    # the shim and the job, with the sandbox's init between them where namespaces are used
    assert len(processes_with(b_marker)) in (2, 3)
    kill_all(b_marker)
    wait_until("B's processes to die", lambda: gone(b_marker))
    release_c.touch()
    wait_until("C to finish with nobody watching", lambda: gone(c_marker))
    assert processes_with(f"fault-job-A-{folder.name}")

    with (
        ComputeServer(home, port=first.port, node_lost_after_s=120) as second,
        second.client() as c,
    ):
        try:
            done_b = c.wait_job("p", b, timeout_s=90)
            done_c = c.wait_job("p", cj, timeout_s=90)
            # A was adopted alive: it is still running, on its first and only attempt
            job_a = c.read_job("p", a)
            assert job_a.state == "running" and job_a.attempts == 1
            release_a.touch()
            done_a = c.wait_job("p", a, timeout_s=90)
            _check_reconciled(c, folder, done_a, done_b, done_c)
            verified = run_cli(
                "audit",
                "verify",
                env=clean_env(UNDERLAY_URL=second.url, UNDERLAY_TOKEN=ADMIN_TOKEN),
            )
            assert verified.returncode == 0 and verified.stdout.startswith("audit log OK")
            # output shipped before the kill is not shipped again by the restarted agent
            for job, name in ((a, "A"), (cj, "C")):
                log = log_of(c, job)
                assert log.count(f"{name} started attempt 1\n") == 1, log
        finally:
            for active in c.list_jobs("p", state=["queued", "admitted", "running"]):
                c.cancel_job("p", active.id)
                c.wait_job("p", active.id, timeout_s=30)


def _check_reconciled(
    c: Client, folder: Path, done_a: JobRead, done_b: JobRead, done_c: JobRead
) -> None:
    # alive -> adopted, and it ran exactly once
    assert done_a.state == "succeeded" and done_a.attempts == 1, done_a.reason
    assert "A-MARKER finished" in log_of(c, done_a.id)
    assert runs(folder, "A") == 1
    # ended while nobody watched -> its recorded exit is reported, once
    assert done_c.state == "succeeded" and done_c.attempts == 1, done_c.reason
    assert "C-MARKER finished" in log_of(c, done_c.id)
    assert runs(folder, "C") == 1
    # gone -> lost, and retried by its policy
    assert done_b.state == "succeeded" and done_b.attempts == 2, done_b.reason
    assert runs(folder, "B") == 2
    b_log = log_of(c, done_b.id)
    assert "B-MARKER second attempt finished" in b_log
    transitions = audit_of(c, done_b.id)
    lost = [detail for action, detail in transitions if action == "job.lost"]
    assert lost and lost[0]["reason"] == "process disappeared without an exit status"
    assert [action for action, _ in transitions].count("job.succeeded") == 1
    # each attempt billed once: 1 + 2 + 1
    by_job = {row.key: row.attempts for row in c.usage(project="p", group_by="job")}
    assert sorted(by_job.values()) == [1, 1, 2]


def test_an_outage_longer_than_node_lost_after_does_not_lose_live_jobs(
    tmp_path: Path, folder: Path
) -> None:
    """The control plane is down longer than ``node_lost_after_s``: its nodes were silent
    because it was, not because they died. The live job must be adopted, not lost."""
    home = tmp_path / "home"
    release = folder / "release"
    body = f"""
        while not Path({str(release)!r}).exists():
            time.sleep(0.05)
        print("L-MARKER finished", flush=True)
    """
    first = ComputeServer(home, node_lost_after_s=2).start()
    try:
        with first.client() as c:
            c.create_project("p")
            wait_until("the local node to register", c.list_nodes)
            job = c.submit_job("p", job_script(folder, "L", body), gpus=1).id
            _wait_for_log(c, job, "L started attempt 1\n")
    finally:
        first.kill()
    _outage_of(home, hours=1)  # the outage outlasts node_lost_after_s by far
    assert processes_with(f"fault-job-L-{folder.name}")
    with ComputeServer(home, port=first.port, node_lost_after_s=2) as second, second.client() as c:
        try:
            wait_until("node-1 to answer again", lambda: c.list_nodes()[0].status == "ready")
            release.touch()
            done = c.wait_job("p", job, timeout_s=60)
            assert done.state == "succeeded" and done.attempts == 1, done.reason
            assert "L-MARKER finished" in log_of(c, job)
            assert runs(folder, "L") == 1
        finally:
            for active in c.list_jobs("p", state=["queued", "admitted", "running"]):
                c.cancel_job("p", active.id)
                c.wait_job("p", active.id, timeout_s=30)


def _outage_of(home: Path, hours: float) -> None:
    """Time passes while the control plane is down: every node's last heartbeat moves back."""
    import datetime as dt

    from sqlalchemy import update

    from underlay.compute.models import NodeRow
    from underlay.store import Database, Scope

    db = Database(f"sqlite:///{home / 'underlay.db'}")
    try:
        with db.session(Scope.everything()) as s:
            before = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
            s.execute(update(NodeRow).values(heartbeat_at=before))
    finally:
        db.dispose()


# -- a node that stops answering --------------------------------------------------------------


def node_2(*, accelerators: int = 2) -> dict[str, Any]:
    """A small hand-built inventory, as :meth:`NodeInventory.to_dict` writes it."""
    return {
        "name": "node-2",
        "hostname": "rack-7.example",
        "cpu_count": 8,
        "cpu_milli": 8000,
        "memory_mib": 32768,
        "cpu_utilization": 0.1,
        "rapl_readable": False,
        "accelerators": [
            {
                "index": i,
                "uuid": f"SIM-node-2-{i}",
                "vendor": "simulated",
                "type": "H100",
                "memory_mib": 81920,
                "idle_watts": 70.0,
                "busy_watts": 700.0,
                "simulated": True,
            }
            for i in range(accelerators)
        ],
    }


def launches(c: Client, want: set[int]) -> AgentWork:
    """Heartbeat as node-2 until the server asks it to launch attempts of all ``want`` jobs."""

    def ask() -> AgentWork | None:
        work = c.heartbeat("node-2", node_2())
        return work if {i.job_id for i in work.launch} >= want else None

    work: AgentWork = wait_until(f"node-2 to be asked to launch {want}", ask)
    return work


def test_a_silent_node_is_lost_and_its_jobs_follow_their_retry_policy(tmp_path: Path) -> None:
    with (
        ComputeServer(tmp_path / "home", node_lost_after_s=3) as server,
        server.client() as c,
    ):
        c.create_project("p")
        wait_until("the local node to register", c.list_nodes)
        c.cordon("node-1", "kept free for this test")  # so the jobs go to node-2
        assert c.heartbeat("node-2", node_2()).node_status == "ready"
        retried = c.submit_job("p", ["train"], gpus=1, max_retries=1).id
        once = c.submit_job("p", ["train"], gpus=1).id
        work = launches(c, {retried, once})
        for info in work.launch:
            c.attempt_started("node-2", info.attempt_id, os.getpid(), time.time())
        assert {c.read_job("p", j).node for j in (retried, once)} == {"node-2"}
        assert c.read_job("p", retried).state == "running"

        # node-2 goes silent; node-1 (the server's own agent) keeps answering
        (lost,) = wait_until(
            "node-2 to be lost", lambda: [n for n in c.list_nodes() if n.status == "lost"]
        )
        assert lost.name == "node-2" and lost.status_reason.startswith("no heartbeat since")
        assert {n.name: n.status for n in c.list_nodes()}["node-1"] == "cordoned"
        ended = c.wait_job("p", once, timeout_s=30)
        assert ended.state == "lost" and ended.attempts == 1
        assert ended.reason == "node node-2 stopped answering"
        requeued = c.read_job("p", retried)
        assert requeued.state == "queued" and requeued.attempts == 1, requeued.reason
        queued = [d for a, d in audit_of(c, retried) if a == "job.queued"]
        assert queued[-1]["reason"] == "retry 1 of 1 after: node node-2 stopped answering"

        # node-2 comes back: the retry runs there, and the lost attempts are not handed out
        work = launches(c, {retried})
        assert [(i.job_id, i.attempt) for i in work.launch] == [(retried, 2)]
        assert work.running == []
        assert {n.name: n.status for n in c.list_nodes()}["node-2"] == "ready"
        (info,) = work.launch
        c.attempt_started("node-2", info.attempt_id, os.getpid(), time.time())
        report = AttemptEnded(state="succeeded", exit_code=0, reason="exited with code 0")
        c.attempt_ended("node-2", info.attempt_id, report)
        done = c.wait_job("p", retried, timeout_s=30)
        assert done.state == "succeeded" and done.attempts == 2
        actions = [action for action, _ in audit_of(c, retried)]
        assert actions.count("job.lost") == 1 and actions.count("job.admitted") == 2
        assert c.read_job("p", once).state == "lost"  # no retries left: it stays lost
        assert c.verify_audit().ok


def test_a_retry_waits_for_hardware_that_only_the_lost_node_has(tmp_path: Path) -> None:
    """The H100s exist, on a node that is merely silent: the retry must wait for it, not
    fail as if the cluster never had an H100."""
    with (
        ComputeServer(tmp_path / "home", node_lost_after_s=3) as server,
        server.client() as c,
    ):
        c.create_project("p")
        wait_until("the local node to register", c.list_nodes)
        c.heartbeat("node-2", node_2())
        job = c.submit_job("p", ["train"], gpus=1, gpu_type="H100", max_retries=3).id
        (info,) = launches(c, {job}).launch
        c.attempt_started("node-2", info.attempt_id, os.getpid(), time.time())
        wait_until("node-2 to be lost", lambda: c.read_job("p", job).state != "running")

        # once a scheduling round has looked at it again, its reason is no longer the retry's
        def looked_at_again() -> JobRead | None:
            now = c.read_job("p", job)
            return None if now.reason.startswith("retry") else now

        after: JobRead = wait_until("a round after the retry", looked_at_again)
        assert after.state == "queued", after.reason
        assert after.attempts == 1
        assert "H100" in after.reason


# -- a node agent cut off from the server ----------------------------------------------------


def _second_agent(tmp_path: Path, folder: Path, url: str) -> tuple[dict[str, str], list[str]]:
    """The environment and command line of a second agent, node-2, with one simulated GPU."""
    env = clean_env(
        UNDERLAY_HOME=str(tmp_path / "agent-home"),
        UNDERLAY_COMPUTE__SIMULATED_ACCELERATORS='[{"type": "A100", "count": 1}]',
        UNDERLAY_COMPUTE__HEARTBEAT_INTERVAL_S="0.2",
        UNDERLAY_COMPUTE__GRACE_S="2",
        UNDERLAY_COMPUTE__SANDBOX_SHARE=json.dumps([str(folder)]),
    )
    return env, [*CLI, "agent", "--server", url, "--token", ADMIN_TOKEN, "--name", "node-2"]


def test_an_attempt_given_up_while_its_agent_was_cut_off_does_not_run_on(
    tmp_path: Path, folder: Path
) -> None:
    """A real second agent is frozen (SIGSTOP) past ``node_lost_after_s``: the server gives up
    its attempt and retries the job. When the agent answers again, the first attempt must
    stop: it must not run beside the retry."""
    body = """
        (FOLDER / f"pid-{os.environ['UNDERLAY_ATTEMPT']}").write_text(str(os.getpid()))
        while not (FOLDER / "release").exists():
            time.sleep(0.05)
        print("P-MARKER finished", flush=True)
    """
    with (
        ComputeServer(tmp_path / "home", node_lost_after_s=3) as server,
        server.client() as c,
    ):
        c.create_project("p")
        wait_until("the local node to register", c.list_nodes)
        c.cordon("node-1", "kept free for this test")
        env, argv = _second_agent(tmp_path, folder, server.url)
        with (tmp_path / "agent.log").open("wb") as log:
            agent = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until("node-2 to register", lambda: len(c.list_nodes()) == 2)
            job = c.submit_job("p", job_script(folder, "P", body), gpus=1, max_retries=1).id
            wait_until("attempt 1 to start", lambda: _pid(folder, 1))
            marker = f"fault-job-P-{folder.name}"
            agent.send_signal(signal.SIGSTOP)  # cut off; its job runs on
            wait_until("attempt 1 to be given up", lambda: c.read_job("p", job).state == "queued")
            agent.send_signal(signal.SIGCONT)
            wait_until("attempt 2 to start", lambda: _pid(folder, 2))
            wait_until(
                "the given-up attempt 1 to be stopped",
                lambda: not _attempt_processes(marker, "1"),
                within_s=30,
            )
            (folder / "release").touch()
            done = c.wait_job("p", job, timeout_s=60)
            assert done.state == "succeeded" and done.attempts == 2
            assert runs(folder, "P") == 2
        finally:
            agent.send_signal(signal.SIGCONT)
            for active in c.list_jobs("p", state=["queued", "admitted", "running"]):
                c.cancel_job("p", active.id)
            agent.terminate()
            agent.wait(15)


def test_an_attempt_given_up_while_its_agent_was_down_is_stopped_by_the_next_agent(
    tmp_path: Path, folder: Path
) -> None:
    """A real second agent is SIGKILLed past ``node_lost_after_s``, its job running on: the
    server gives the attempt up and retries the job. The agent started again on the same
    folder is not asked about attempt 1 any more, and must stop it, not leave it running."""
    body = """
        (FOLDER / f"pid-{os.environ['UNDERLAY_ATTEMPT']}").write_text(str(os.getpid()))
        while not (FOLDER / "release").exists():
            time.sleep(0.05)
        print("K-MARKER finished", flush=True)
    """
    with (
        ComputeServer(tmp_path / "home", node_lost_after_s=3) as server,
        server.client() as c,
    ):
        c.create_project("p")
        wait_until("the local node to register", c.list_nodes)
        c.cordon("node-1", "kept free for this test")
        env, argv = _second_agent(tmp_path, folder, server.url)

        def start_agent() -> subprocess.Popen[bytes]:
            with (tmp_path / "agent.log").open("ab") as log:
                return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

        agent = start_agent()
        try:
            wait_until("node-2 to register", lambda: len(c.list_nodes()) == 2)
            job = c.submit_job("p", job_script(folder, "K", body), gpus=1, max_retries=1).id
            wait_until("attempt 1 to start", lambda: _pid(folder, 1))
            marker = f"fault-job-K-{folder.name}"
            agent.kill()  # its job runs on, orphaned
            agent.wait(15)
            wait_until("attempt 1 to be given up", lambda: c.read_job("p", job).state == "queued")
            assert _attempt_processes(marker, "1")
            agent = start_agent()
            wait_until("attempt 2 to start", lambda: _pid(folder, 2))
            wait_until(
                "the given-up attempt 1 to be stopped",
                lambda: not _attempt_processes(marker, "1"),
                within_s=30,
            )
            (folder / "release").touch()
            done = c.wait_job("p", job, timeout_s=60)
            assert done.state == "succeeded" and done.attempts == 2
            assert runs(folder, "K") == 2
        finally:
            for active in c.list_jobs("p", state=["queued", "admitted", "running"]):
                c.cancel_job("p", active.id)
            agent.terminate()
            agent.wait(15)
            kill_all(f"fault-job-K-{folder.name}")


def _pid(folder: Path, attempt: int) -> int | None:
    path = folder / f"pid-{attempt}"
    text = path.read_text() if path.exists() else ""
    return int(text) if text else None


def _attempt_processes(marker: str, attempt: str) -> list[psutil.Process]:
    """Live processes of one attempt (shim, sandbox init, job), found from the host: a
    sandboxed job sees only its own PID namespace, so the pid it could report means nothing
    here."""
    found = []
    for process in processes_with(marker):
        try:
            if process.environ().get("UNDERLAY_ATTEMPT") == attempt:
                found.append(process)
        except psutil.Error:
            continue
    return found
