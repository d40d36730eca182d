"""``underlay nodes | jobs | quotas | budget | usage`` as a user runs them: child processes
against a live server whose built-in node agent declares two simulated A100s.

Jobs are real processes under the local executor; only the accelerators are simulated.
Failures must print one line starting with ``error:`` and exit non-zero. SQLite only: the
backends are covered by the service and API tests, here the face is under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from tests.cli.conftest import CLI, clean_env, run_cli
from tests.conftest import LiveServer, sqlite_url
from underlay.client import Client
from underlay.config import ComputeSettings, Settings, SimulatedAccelerator
from underlay.errors import PermissionDenied

PY = sys.executable
Cli = Callable[..., CompletedProcess[str]]
SECRET = "s3cr3t-value-never-shown"


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only for the CLI (overrides the backend-parametrised fixture)."""
    return sqlite_url(sqlite_template, tmp_path)


@pytest.fixture
def settings(settings: Settings) -> Settings:
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
    """The admin's SDK client with project ``vision`` and the node registered; at teardown
    every job still holding resources is cancelled and waited for, so no process lingers."""
    with server.client() as c:
        c.create_project("vision")
        deadline = time.monotonic() + 30
        while not c.list_nodes():
            assert time.monotonic() < deadline, "the local node agent never registered"
            time.sleep(0.05)
        yield c
        for job in c.list_jobs("vision", state=["queued", "admitted", "running"]):
            c.cancel_job("vision", job.id)
            c.wait_job("vision", job.id, timeout_s=30)


@pytest.fixture
def cli(server: LiveServer, ul: Client, tmp_path: Path) -> Cli:
    """Run a CLI command as the admin; ``ok=False`` allows a non-zero exit."""
    home = tmp_path / "cli-home"
    home.mkdir()

    def run(
        *args: str, ok: bool = True, extra: dict[str, str] | None = None, timeout: float = 90
    ) -> CompletedProcess[str]:
        env = clean_env(
            UNDERLAY_URL=server.url, UNDERLAY_TOKEN=server.admin_token, UNDERLAY_HOME=str(home)
        )
        env["COLUMNS"] = "400"  # rich tables: no wrapped cells to search across
        env.update(extra or {})
        result = run_cli(*args, env=env, timeout=timeout)
        if ok:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout, result.stderr
        return result

    return run


def one_line_error(result: CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode != 0, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def py(body: str) -> list[str]:
    return ["--", PY, "-c", textwrap.dedent(body)]


def submit(cli: Cli, *args: str) -> int:
    out = cli("jobs", "submit", "-p", "vision", *args).stdout.strip()
    assert out.isdigit(), out
    return int(out)


def wait_until(what: str, check: Callable[[], Any], within_s: float = 60) -> Any:
    deadline = time.monotonic() + within_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what} did not happen within {within_s} s"
        time.sleep(0.1)
    return value


# -- nodes ------------------------------------------------------------------------------------


def test_nodes_ls_shows_the_simulated_accelerators(cli: Cli) -> None:
    out = cli("nodes", "ls").stdout
    assert "node-1" in out and "ready" in out
    assert "0:A100 (simulated)" in out and "1:A100 (simulated)" in out
    (node,) = json.loads(cli("nodes", "ls", "--json").stdout)
    assert node["name"] == "node-1" and node["simulated"]
    shown = "NOT ISOLATED" if node["isolation"] == "none" else node["isolation"]
    assert shown in out  # how the node sandboxes jobs
    if os.geteuid() == 0:
        assert node["isolation"] == "namespaces+user"
    assert [(a["type"], a["simulated"], a["healthy"]) for a in node["accelerators"]] == [
        ("A100", True, True)
    ] * 2


def test_an_agent_token_from_the_cli_speaks_for_its_node_only(cli: Cli, server: LiveServer) -> None:
    secret = cli("nodes", "token", "gpu-7").stdout.strip()
    assert secret.startswith("ul_")
    with Client(server.url, secret) as agent:
        work = agent.heartbeat(
            "gpu-7", {"name": "gpu-7", "cpu_count": 1, "cpu_milli": 1000, "memory_mib": 1024}
        )
        assert work.launch == []
        with pytest.raises(PermissionDenied, match="only node 'node-1'"):
            agent.heartbeat(
                "node-1", {"name": "node-1", "cpu_count": 1, "cpu_milli": 1000, "memory_mib": 1024}
            )
        with pytest.raises(PermissionDenied, match="agent token"):
            agent.list_nodes()
        with pytest.raises(PermissionDenied, match="agent token"):
            agent.list_jobs("vision")


def test_cordon_keeps_new_work_off_and_uncordon_lets_it_run(cli: Cli, ul: Client) -> None:
    assert cli("nodes", "cordon", "node-1", "--reason", "new fans").stdout.strip() == (
        "cordoned node-1"
    )
    assert "cordoned (new fans)" in cli("nodes", "ls").stdout
    job = submit(cli, "--gpus", "1", *py("print('after maintenance')"))
    waiting = wait_until("a reason to wait", lambda: ul.read_job("vision", job).reason)
    assert ul.read_job("vision", job).state == "queued", waiting
    assert cli("nodes", "uncordon", "node-1").stdout.strip() == "uncordoned node-1"
    assert cli("jobs", "wait", str(job), "-p", "vision", "--timeout", "60").returncode == 0
    one_line_error(cli("nodes", "cordon", "node-9", ok=False), "node 'node-9' not found")


# -- a job's life through the CLI --------------------------------------------------------------


def test_a_job_is_submitted_waited_for_logged_listed_and_billed(cli: Cli) -> None:
    job = submit(cli, "--gpus", "1", "--name", "hello", *py("print('hi')"))
    waited = cli("jobs", "wait", str(job), "-p", "vision", "--timeout", "60")
    assert waited.stdout.startswith(f"job {job}: succeeded")
    assert "hi\n" in cli("jobs", "logs", str(job), "-p", "vision").stdout
    rows = json.loads(cli("jobs", "ls", "-p", "vision", "--json").stdout)
    (row,) = [r for r in rows if r["id"] == job]
    assert row["state"] == "succeeded" and row["name"] == "hello" and row["exit_code"] == 0
    assert row["node"] == "node-1" and row["gpus"] == 1
    shown = json.loads(cli("jobs", "show", str(job), "-p", "vision", "--json").stdout)
    assert shown["id"] == job and shown["attempts"] == 1
    (usage,) = json.loads(cli("usage", "-p", "vision", "--json").stdout)
    assert usage["jobs"] == 1 and usage["attempts"] == 1
    assert usage["gpu_hours"] > 0 and usage["energy_kwh"] > 0
    assert usage["cost"] > 0 and usage["carbon_kg"] > 0
    assert usage["currency"] == "USD" and usage["energy_estimated"] is True
    table = cli("usage", "-p", "vision").stdout
    for column in ("GPU time", "energy", "cost", "carbon"):
        assert column in table
    assert " GPU-h" in table and "Wh (est.)" in table and " USD" in table and " gCO2e" in table
    assert "e-0" not in table  # no raw floats such as 3.6849166666666666e-05


NARROW = {"COLUMNS": "80"}
LONG_NAME = "a-rather-long-job-name-that-stays-whole-in-narrow-terminals"


def fits_and_shows_whole(out: str, *identifiers: str) -> None:
    """Every line fits 80 columns, and each identifier appears unbroken on one line."""
    assert max(len(line) for line in out.splitlines()) <= 80, out
    # Rich crops a table wider than the terminal: every line must keep its right border.
    assert all(line.rstrip()[-1] in "┓┃┩│┘" for line in out.splitlines() if line.strip()), out
    for ident in identifiers:
        assert ident in out, (ident, out)
    assert "…" not in out, out


def test_tables_fit_80_columns_and_never_cut_identifiers(cli: Cli) -> None:
    job = submit(cli, "--gpus", "1", "--name", LONG_NAME, *py("print('hi')"))
    cli("jobs", "wait", str(job), "-p", "vision", "--timeout", "60")
    jobs = cli("jobs", "ls", "-p", "vision", extra=NARROW).stdout
    fits_and_shows_whole(jobs, LONG_NAME, str(job), "succeeded")
    fits_and_shows_whole(cli("nodes", "ls", extra=NARROW).stdout, "node-1", "0:A100")
    other = submit(cli, "--gpus", "1", "--name", "resnet50-finetune", *py("print('hi')"))
    cli("jobs", "wait", str(other), "-p", "vision", "--timeout", "60")
    usage = cli("usage", "-p", "vision", "--by", "user", extra=NARROW).stdout
    fits_and_shows_whole(usage, "admin", "GPU-h", "USD", "gCO2e")
    fits_and_shows_whole(cli("usage", "-p", "vision", extra=NARROW).stdout, "total", "gCO2e")
    wide = cli("usage", "-p", "vision", "--by", "user", extra={"COLUMNS": "200"}).stdout
    assert "CPU time" in wide and "CPU time" not in usage  # optional columns go first


def test_wait_prints_each_state_change_in_order_on_stderr(cli: Cli) -> None:
    # long enough that `jobs wait` (a fresh process) sees it running even on a loaded machine
    job = submit(cli, *py("import time; time.sleep(6)"))
    waited = cli("jobs", "wait", str(job), "-p", "vision", "--timeout", "60")
    assert waited.stdout == f"job {job}: succeeded exited with code 0\n"  # stdout unchanged
    lines = waited.stderr.splitlines()
    pattern = re.compile(rf"^\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ job {job}: (.+)$")
    changes = [pattern.fullmatch(line).group(1) for line in lines]  # type: ignore[union-attr]
    states = [changes[0].split(" ")[0]] + [c.split(" → ")[1].split(" ")[0] for c in changes[1:]]
    for before, change in zip(states, changes[1:], strict=False):
        assert change.startswith(f"{before} → "), changes  # each line picks up the last
    assert states[-1] == "succeeded" and changes[-1].endswith("(node node-1, exit 0)")
    assert "running → succeeded (node node-1, exit 0)" in changes
    assert "running" in states and len(set(states)) == len(states), changes


def test_a_failing_job_makes_wait_exit_non_zero_with_the_reason(cli: Cli) -> None:
    job = submit(cli, *py("import sys; sys.exit(3)"))
    waited = cli("jobs", "wait", str(job), "-p", "vision", "--timeout", "60", ok=False)
    assert waited.returncode == 1
    assert waited.stdout.strip() == f"job {job}: failed exited with code 3"


def test_an_unsatisfiable_job_is_refused_with_the_policys_reason(cli: Cli, ul: Client) -> None:
    one_line_error(
        cli("jobs", "submit", "-p", "vision", "--gpus", "9", "--", "true", ok=False),
        "this job can never run here: needs 9 GPUs per worker; the largest node has 2",
    )
    one_line_error(
        cli(
            "jobs",
            "submit",
            "-p",
            "vision",
            "--gpu-type",
            "H100",
            "--gpus",
            "1",
            "--",
            "true",
            ok=False,
        ),
        "no node has accelerator type 'H100'",
    )
    one_line_error(
        cli("jobs", "submit", "-p", "nowhere", "--", "true", ok=False),
        "project 'nowhere' not found",
    )
    assert ul.list_jobs("vision") == []


def test_constraint_options_reach_the_job_and_its_pending_reason(cli: Cli) -> None:
    job = submit(
        cli,
        "--app",
        "web",
        "--max-per-node",
        "2",
        "--node-selector",
        "gpu=h100",
        "--node-selector",
        "zone=a",
        "--not-preemptible",
        "--",
        "true",
    )
    shown = json.loads(cli("jobs", "show", str(job), "-p", "vision", "--json").stdout)
    assert (shown["app"], shown["max_per_node"], shown["preemptible"]) == ("web", 2, False)
    assert shown["node_selector"] == ["gpu=h100", "zone=a"]

    def reason() -> str:
        got = json.loads(cli("jobs", "show", str(job), "-p", "vision", "--json").stdout)
        return str(got["reason"])

    assert wait_until("a pending reason", reason) == "no node with labels gpu=h100, zone=a"


def test_bad_constraint_options_are_one_line_errors(cli: Cli) -> None:
    base = ("jobs", "submit", "-p", "vision")
    one_line_error(cli(*base, "--node-selector", "zone", "--", "true", ok=False), "zone")
    one_line_error(cli(*base, "--max-per-node", "0", "--", "true", ok=False), "max_per_node")
    one_line_error(cli(*base, "--app", "a b", "--", "true", ok=False), "app")


def test_bad_options_are_one_line_errors(cli: Cli, tmp_path: Path) -> None:
    one_line_error(
        cli("jobs", "submit", "-p", "vision", "--env", "NOVALUE", "--", "true", ok=False),
        "NOVALUE",
        "NAME=VALUE",
    )
    one_line_error(
        cli("jobs", "submit", "-p", "vision", "--cpus", "-1", "--", "true", ok=False), "cpus"
    )
    one_line_error(
        cli("jobs", "submit", "-p", "vision", "--priority", "urgent", "--", "true", ok=False),
        "priority",
    )
    missing = tmp_path / "no-such-folder"
    one_line_error(
        cli("jobs", "submit", "-p", "vision", "--workdir", str(missing), "--", "true", ok=False),
        "no-such-folder",
    )
    one_line_error(cli("jobs", "show", "999", "-p", "vision", ok=False), "job 999 not found")
    one_line_error(cli("jobs", "logs", "999", "-p", "vision", ok=False), "job 999 not found")
    one_line_error(cli("jobs", "cancel", "999", "-p", "vision", ok=False), "job 999 not found")
    one_line_error(cli("jobs", "ls", "-p", "vision", "--state", "sleeping", ok=False), "state")


def test_a_pending_jobs_reason_shows_in_ls_and_cancel_ends_both(cli: Cli, ul: Client) -> None:
    holder = submit(
        cli, "--gpus", "2", *py("import time; print('holding', flush=True); time.sleep(120)")
    )
    wait_until("the holder to run", lambda: ul.read_job("vision", holder).state == "running")
    waiter = submit(cli, "--gpus", "2", *py("print('my turn')"))
    reason = wait_until("a reason to wait", lambda: ul.read_job("vision", waiter).reason)
    assert "no healthy node has 2 free A100 GPUs" in reason
    rows = {r["id"]: r for r in json.loads(cli("jobs", "ls", "-p", "vision", "--json").stdout)}
    assert rows[waiter]["state"] == "queued" and rows[waiter]["reason"] == reason
    assert reason in cli("jobs", "ls", "-p", "vision").stdout
    queued_only = json.loads(
        cli("jobs", "ls", "-p", "vision", "--state", "queued", "--json").stdout
    )
    assert [r["id"] for r in queued_only] == [waiter]

    cancelled = cli("jobs", "cancel", str(waiter), "-p", "vision").stdout.strip()
    assert cancelled == f"job {waiter}: cancelled cancelled by admin"
    stopping = cli("jobs", "cancel", str(holder), "-p", "vision").stdout.strip()
    assert stopping == f"job {holder}: running cancelling (requested by admin)"
    done = cli("jobs", "wait", str(holder), "-p", "vision", "--timeout", "60", ok=False)
    assert done.returncode == 1
    assert done.stdout.strip() == f"job {holder}: cancelled cancelled by admin"  # not "cancelling"
    assert ul.read_job("vision", holder).reason == "cancelled by admin"
    assert "holding" in cli("jobs", "logs", str(holder), "-p", "vision").stdout
    again = cli("jobs", "cancel", str(holder), "-p", "vision")  # exit 0, as scancel
    assert again.stdout.strip() == f"job {holder} has ended already: cancelled"
    assert again.stderr == ""


def test_logs_follow_streams_until_the_job_ends(
    cli: Cli, server: LiveServer, tmp_path: Path
) -> None:
    body = """
        import os, time
        print("first line", flush=True)
        while not os.path.exists("release"):  # in its working folder: the job is sandboxed
            time.sleep(0.05)
        print("last line", flush=True)
    """
    job = submit(cli, *py(body))
    release = server.settings.home / "agent" / "node-1" / f"job-{job}-1" / "release"
    env = clean_env(UNDERLAY_URL=server.url, UNDERLAY_TOKEN=server.admin_token)
    errors = tmp_path / "follow.err"
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    with (
        errors.open("w") as stderr,
        subprocess.Popen(
            [*CLI, "jobs", "logs", "-f", str(job), "-p", "vision"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        ) as follower,
    ):

        def pump() -> None:
            assert follower.stdout is not None
            for line in follower.stdout:
                lines.put(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            while "first line\n" not in seen:  # streamed while the job still runs
                seen.append(lines.get(timeout=60))
            assert follower.poll() is None  # the job is not over: still following
            release.touch()
            follower.wait(60)
            reader.join(10)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait(10)
    while not lines.empty():
        seen.append(lines.get())
    assert follower.returncode == 0, errors.read_text()
    assert seen[-1] == "last line\n"
    assert seen.count("first line\n") == 1  # no chunk sent twice
    assert errors.read_text().strip() == f"job {job}: succeeded exited with code 0"


def test_logs_follow_of_a_failed_job_exits_non_zero_with_the_final_state(cli: Cli) -> None:
    job = submit(cli, *py("import sys; print('trying', flush=True); sys.exit(3)"))
    followed = cli("jobs", "logs", "-f", str(job), "-p", "vision", ok=False)
    assert followed.returncode == 1
    assert followed.stdout.endswith("\ntrying\n")  # stdout holds the log only
    assert f"job {job}: failed" not in followed.stdout
    assert followed.stderr.strip() == f"job {job}: failed exited with code 3"


def test_wait_timeout_has_its_own_exit_status(cli: Cli, ul: Client) -> None:
    job = submit(cli, *py("import time; time.sleep(120)"))
    wait_until("the job to run", lambda: ul.read_job("vision", job).state == "running")
    waited = cli("jobs", "wait", str(job), "-p", "vision", "--timeout", "0.2", ok=False)
    assert waited.returncode == 124, waited.stderr
    assert waited.stdout.strip() == f"job {job}: running"
    assert waited.stderr.strip().splitlines()[-1] == (
        f"timed out: job {job} is still running after 0.2 s; the job goes on"
    )
    assert ul.read_job("vision", job).state == "running"  # waiting gave up, the job did not
    cli("jobs", "cancel", str(job), "-p", "vision")
    ended = cli("jobs", "wait", str(job), "-p", "vision", "--timeout", "60", ok=False)
    assert ended.returncode == 1  # ended without success: not the time-out's status
    help_text = cli("jobs", "wait", "--help").stdout
    assert "124" in help_text and "0 the job succeeded" in help_text


# -- what a job carries --------------------------------------------------------------------------


def test_workdir_is_snapshot_and_the_job_runs_in_it(cli: Cli, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "words.txt").write_text("alpha beta gamma\n")
    (project / "train.py").write_text(
        "from pathlib import Path\n"
        "words = Path('data/words.txt').read_text().split()\n"
        "print('trained on', len(words), 'words from', Path.cwd().name.split('-')[0])\n"
    )
    job = submit(cli, "--workdir", str(project), "--", PY, "train.py")
    (project / "train.py").write_text("print('edited after submit')\n")  # a snapshot was sent
    assert cli("jobs", "wait", str(job), "-p", "vision", "--timeout", "60").returncode == 0
    log = cli("jobs", "logs", str(job), "-p", "vision").stdout
    assert "trained on 3 words from job" in log and "edited after submit" not in log


def test_underlayignore_leaves_out_what_it_says_and_the_job_sees_the_rest(
    cli: Cli, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    kept = ("src/a.py", "data/keep.txt")
    dropped = ("src/cache/x.bin", "logs/run.log", "data/big.csv", ".git/HEAD", "__pycache__/x")
    for rel in kept + dropped:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(rel)
    (project / "outside").symlink_to(tmp_path)  # a link out of the folder is not followed
    (project / ".underlayignore").write_text("*.log\ncache/\ndata/*\n!keep.txt\n")
    lister = (
        "import os\n"
        "for d, dirs, files in sorted(os.walk('.')):\n"
        "    for f in sorted(files): print('FILE', os.path.join(d, f)[2:])\n"
    )
    (project / "ls.py").write_text(lister)
    submitted = cli(
        "jobs", "submit", "-p", "vision", "--workdir", str(project), "--workdir-warn-mb",
        "0.000001", "--", PY, "ls.py", extra={"FORCE_COLOR": "1", "COLUMNS": "200"},
    )  # fmt: skip
    assert "left out 6 path(s)" in submitted.stderr  # run.log, cache/, big.csv, link, .git, pyc
    assert "pack workdir" in submitted.stderr and "upload workdir" in submitted.stderr
    assert "warning: workdir is 0 MB after .underlayignore" in submitted.stderr
    job = submitted.stdout.strip()
    assert job.isdigit(), submitted.stdout  # progress never lands on stdout
    assert cli("jobs", "wait", job, "-p", "vision", "--timeout", "60").returncode == 0
    log = cli("jobs", "logs", job, "-p", "vision").stdout
    files = sorted(line.split(" ", 1)[1] for line in log.splitlines() if line.startswith("FILE"))
    assert files == [".underlayignore", "data/keep.txt", "ls.py", "src/a.py"], log


def test_env_reaches_the_job_and_secrets_are_never_shown(cli: Cli) -> None:
    body = """
        import hashlib, os
        print("greeting", os.environ["GREETING"])
        for name in ("API_KEY", "FROM_ENV"):
            print(name, hashlib.sha256(os.environ[name].encode()).hexdigest()[:12])
    """
    extra = {"FROM_ENV": SECRET + "-2"}  # --secret NAME reads it from the caller's env
    submitted = cli(
        "jobs",
        "submit",
        "-p",
        "vision",
        "--env",
        "GREETING=hello",
        "--secret",
        f"API_KEY={SECRET}",
        "--secret",
        "FROM_ENV",
        *py(body),
        extra=extra,
    )
    job = int(submitted.stdout)
    assert cli("jobs", "wait", str(job), "-p", "vision", "--timeout", "60").returncode == 0
    log = cli("jobs", "logs", str(job), "-p", "vision").stdout
    assert "greeting hello" in log
    assert f"API_KEY {hashlib.sha256(SECRET.encode()).hexdigest()[:12]}" in log
    assert f"FROM_ENV {hashlib.sha256(extra['FROM_ENV'].encode()).hexdigest()[:12]}" in log
    shown = cli("jobs", "show", str(job), "-p", "vision").stdout
    shown_json = cli("jobs", "show", str(job), "-p", "vision", "--json").stdout
    listed = cli("jobs", "ls", "-p", "vision", "--json").stdout
    audit = cli("audit", "ls", "--json").stdout
    for text in (shown, shown_json, listed, audit, log):
        assert SECRET not in text


# -- quotas, budgets -----------------------------------------------------------------------------


def test_quotas_set_and_ls(cli: Cli) -> None:
    out = cli("quotas", "set", "A100", "1", "-p", "vision", "--borrow-limit", "1").stdout
    assert out.strip() == "vision: 1 x A100 guaranteed"
    cli("quotas", "set", "H100", "4", "-p", "vision")
    rows = json.loads(cli("quotas", "ls", "-p", "vision", "--json").stdout)
    assert rows == [
        {"accelerator_type": "A100", "guaranteed": 1, "borrow_limit": 1},
        {"accelerator_type": "H100", "guaranteed": 4, "borrow_limit": None},
    ]
    table = cli("quotas", "ls", "-p", "vision").stdout
    assert "A100" in table and "H100" in table
    one_line_error(cli("quotas", "set", "A 100", "1", "-p", "vision", ok=False), "accelerator_type")
    one_line_error(cli("quotas", "set", "A100", "1", "-p", "nowhere", ok=False), "nowhere")


def test_budget_set_show_and_a_spent_budget_blocks_submit(cli: Cli, ul: Client) -> None:
    assert cli("budget", "show", "-p", "vision").stdout.strip() == "project vision has no budget"
    out = cli("budget", "set", "-p", "vision", "--gpu-hours", "10").stdout.strip()
    assert out == "project vision used 0.0 of 10 GPU-hours this month (0%)"
    assert cli("budget", "show", "-p", "vision").stdout.strip() == out
    cli("budget", "set", "-p", "vision", "--gpu-hours", "0")  # a zero budget allows nothing
    shown = cli("budget", "show", "-p", "vision").stdout.strip()
    assert shown == "project vision used 0.0 of 0 GPU-hours this month (100%)"
    one_line_error(
        cli("jobs", "submit", "-p", "vision", "--gpus", "1", "--", "true", ok=False),
        "project vision used 0.0 of 0 GPU-hours this month (100%)",
        "new jobs are refused until next month unless an admin raises the budget",
    )
    assert ul.list_jobs("vision") == []
    cli("budget", "set", "-p", "vision", "--money", "100")
    assert "spent 0.00 of 100.00" in cli("budget", "show", "-p", "vision").stdout
    submit(cli, "--", "true")


def test_budget_show_names_the_currency_as_the_submit_refusal_does(cli: Cli) -> None:
    cli("budget", "set", "-p", "vision", "--money", "0")
    refused = cli("jobs", "submit", "-p", "vision", "--", "true", ok=False)
    one_line_error(refused, "project vision spent 0.00 of 0.00 USD this month (100%)")
    # the same status, read back, must say the same
    shown = cli("budget", "show", "-p", "vision").stdout.strip()
    assert shown == "project vision spent 0.00 of 0.00 USD this month (100%)"


# -- one grammar: global job ids, multi-valued filters, --json --------------------------------


def test_job_commands_take_a_global_id_without_project(cli: Cli, ul: Client) -> None:
    ul.create_project("other")
    job = submit(cli, *py("print('global')"))
    shown = json.loads(cli("jobs", "show", str(job), "--json").stdout)
    assert (shown["id"], shown["project"]) == (job, "vision")
    waited = json.loads(cli("jobs", "wait", str(job), "--timeout", "60", "--json").stdout)
    assert (waited["id"], waited["state"]) == (job, "succeeded")
    assert "global\n" in cli("jobs", "logs", str(job)).stdout
    assert (
        cli("jobs", "cancel", str(job)).stdout.strip() == f"job {job} has ended already: succeeded"
    )
    # a matching -p is accepted; one naming another project is refused, whatever the command
    assert cli("jobs", "show", str(job), "-p", "vision", "--json").returncode == 0
    for command in ("show", "logs", "cancel", "wait"):
        refused = cli("jobs", command, str(job), "-p", "other", ok=False)
        one_line_error(refused, f"job {job} is in project 'vision', not 'other'")
    one_line_error(cli("jobs", "show", "999999", ok=False), "job 999999 not found")


def test_state_filter_takes_commas_and_repeats(cli: Cli) -> None:
    good = submit(cli, "--", "true")
    bad = submit(cli, *py("import sys; sys.exit(1)"))
    cli("jobs", "wait", str(good), "--timeout", "60")
    cli("jobs", "wait", str(bad), "--timeout", "60", ok=False)

    def listed(*states: str) -> set[int]:
        out = cli("jobs", "ls", "-p", "vision", "--json", *states).stdout
        return {row["id"] for row in json.loads(out)}

    assert listed("--state", "succeeded,failed") == {good, bad}
    assert listed("--state", "succeeded", "--state", "failed") == {good, bad}
    assert listed("--state", "failed") == {bad}
    assert listed("--state", "running,queued") == set()
    one_line_error(
        cli("jobs", "ls", "-p", "vision", "--state", "succeeded,done", ok=False),
        "'done'",
        "valid: queued, admitted, running",
    )


def test_submit_budget_and_token_print_json(cli: Cli) -> None:
    submitted = json.loads(cli("jobs", "submit", "-p", "vision", "--json", "--", "true").stdout)
    assert submitted["project"] == "vision" and submitted["command"] == ["true"]
    status = json.loads(cli("budget", "set", "-p", "vision", "--gpu-hours", "10", "--json").stdout)
    assert status == json.loads(cli("budget", "show", "-p", "vision", "--json").stdout)
    assert status["message"] == "project vision used 0.0 of 10 GPU-hours this month (0%)"
    token = json.loads(cli("nodes", "token", "node-2", "--json").stdout)
    assert token["token"].startswith(token["prefix"])
