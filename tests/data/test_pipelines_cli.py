"""``underlay pipelines`` as a user runs it: child processes, a live server, and a real job on
the scheduler (the local executor) for a run that is not ``--local``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.cli.conftest import CLI, clean_env
from tests.cli.test_cli import Cli, as_json, assert_one_line_error
from tests.conftest import sqlite_url
from underlay.config import ComputeSettings, Settings

SRC = Path(__file__).resolve().parents[2] / "src"

PIPELINE = """
name: big_orders
sources:
  orders: orders
transforms:
  - name: big
    sql: select id, amount from orders where amount >= 20
  - name: tagged
    python: steps:tag
output:
  table: big_orders
"""

STEPS = """
import pyarrow as pa

def tag(batches):
    for batch in batches:
        yield batch.append_column("tag", pa.array(["big"] * batch.num_rows))
"""


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only for the CLI: the backends are covered by the SDK tests."""
    return sqlite_url(sqlite_template, tmp_path)


@pytest.fixture
def settings(settings: Settings) -> Settings:  # type: ignore[override]
    """A live local agent, so a pipeline can run as a job."""
    settings.compute = ComputeSettings(
        node_name="node-1", loop_interval_s=0.1, heartbeat_interval_s=0.2, grace_s=3.0
    )
    return settings


def _pipeline(tmp_path: Path, cli: Cli, text: str = PIPELINE) -> Path:
    cli("projects", "create", "shop")
    orders = tmp_path / "orders.csv"
    orders.write_text("id,amount\n" + "".join(f"{i},{i * 5}\n" for i in range(1, 11)))
    cli("tables", "ingest", "orders", str(orders), "-p", "shop")
    folder = tmp_path / "etl"
    folder.mkdir()
    (folder / "steps.py").write_text(textwrap.dedent(STEPS))
    path = folder / "pipeline.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_run_local_prints_the_report_and_runs_list_and_show_it(cli: Cli, tmp_path: Path) -> None:
    path = _pipeline(tmp_path, cli)
    out = cli("pipelines", "run", str(path), "-p", "shop", "--local").stdout.splitlines()
    assert out[0].startswith("pipeline big_orders run 1: succeeded in ")
    assert out[1:] == [
        "  inputs: orders@0",
        "  output: big_orders@0 (rows in 10, out 7, rejected 0, quarantined 0)",
        "  step big (sql): 7 rows",
        "  step tagged (python): 7 rows",
    ]
    again = as_json(cli("pipelines", "run", str(path), "-p", "shop", "--local", "--json"))
    assert (again["id"], again["output_version"], again["rows_out"]) == (2, 1, 7)
    runs = as_json(cli("pipelines", "runs", "big_orders", "-p", "shop", "--json"))
    assert [r["id"] for r in runs] == [2, 1]
    assert "big_orders@1" in cli("pipelines", "runs", "-p", "shop").stdout
    shown = cli("pipelines", "show", "1", "-p", "shop").stdout
    assert "output: big_orders@0 (rows in 10, out 7" in shown
    assert as_json(cli("pipelines", "show", "2", "-p", "shop", "--json")) == again
    head = cli("tables", "head", "big_orders", "-p", "shop", "-n", "1").stdout
    assert json.loads(head)["tag"] == "big"


def test_a_failed_run_and_spec_errors_are_one_line_errors(cli: Cli, tmp_path: Path) -> None:
    path = _pipeline(tmp_path, cli, PIPELINE.replace("steps:tag", "steps:missing"))
    failed = cli("pipelines", "run", str(path), "-p", "shop", "--local", ok=False)
    assert failed.returncode == 1
    assert_one_line_error(
        failed,
        "pipeline big_orders run 1 failed: step 'tagged': InvalidInput: steps:missing is not a "
        "function",
    )
    assert "big_orders run 1 (" not in failed.stdout and ": failed in" in failed.stdout

    path.write_text(textwrap.dedent(PIPELINE).replace("  table: big_orders", "  tabel: x"))
    refused = cli("pipelines", "run", str(path), "-p", "shop", "--local", ok=False)
    assert_one_line_error(refused, "pipeline.yaml line 10: output.table: Field required")
    path.write_text(PIPELINE.replace("select id", "attach 'x' as y; select id"))
    refused = cli("pipelines", "run", str(path), "-p", "shop", ok=False)
    assert_one_line_error(refused, "give one statement, not 2")
    missing = cli("pipelines", "run", str(tmp_path / "nope.yaml"), "-p", "shop", ok=False)
    assert_one_line_error(missing, "nope.yaml is not a file")
    unknown = cli("pipelines", "show", "99", "-p", "shop", ok=False)
    assert_one_line_error(unknown, "pipeline run 99 not found")
    assert as_json(cli("pipelines", "runs", "-p", "shop", "--json"))[0]["status"] == "failed"


def test_sigterm_records_the_run_as_failed(server, cli: Cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """What a cancelled job's runner gets first: SIGTERM ends the run as failed, recorded."""
    path = _pipeline(tmp_path, cli, PIPELINE.replace("steps:tag", "steps:slow"))
    (path.parent / "steps.py").write_text("import time\n\ndef slow(batches):\n    time.sleep(60)\n")
    env = clean_env(
        UNDERLAY_URL=server.url, UNDERLAY_TOKEN=server.admin_token, UNDERLAY_HOME=str(tmp_path)
    )
    child = subprocess.Popen(
        [*CLI, "pipelines", "run", str(path), "-p", "shop", "--local"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with server.client() as c:
            deadline = time.monotonic() + 30
            while not c.list_pipeline_runs("shop") and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)  # into the slow step
            child.send_signal(signal.SIGTERM)
            _, err = child.communicate(timeout=30)
            (run,) = c.list_pipeline_runs("shop")
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 130 and "Traceback" not in err
    assert (run.status, run.error) == ("failed", "interrupted (SIGTERM)")
    assert [s.name for s in run.steps] == ["big"]


def test_a_sigkilled_runner_leaves_no_run_running(server, cli: Cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL gives the runner no chance to record anything: its lease renewals stop, and
    the run is settled as failed once the lease expires (a live runner's run is not)."""
    server.settings.data.pipeline_run_lease_s = 2.0  # the server reads it per request
    path = _pipeline(tmp_path, cli, PIPELINE.replace("steps:tag", "steps:slow"))
    (path.parent / "steps.py").write_text("import time\n\ndef slow(batches):\n    time.sleep(60)\n")
    env = clean_env(
        UNDERLAY_URL=server.url, UNDERLAY_TOKEN=server.admin_token, UNDERLAY_HOME=str(tmp_path)
    )
    child = subprocess.Popen(
        [*CLI, "pipelines", "run", str(path), "-p", "shop", "--local"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with server.client() as c:
            deadline = time.monotonic() + 30
            while not c.list_pipeline_runs("shop") and time.monotonic() < deadline:
                time.sleep(0.1)
            (run,) = c.list_pipeline_runs("shop")
            assert (run.status, run.lease_s) == ("running", 2.0)
            time.sleep(3)  # longer than the lease: the live runner renewed it meanwhile
            assert c.read_pipeline_run("shop", run.id).status == "running"
            child.send_signal(signal.SIGKILL)
            child.wait(15)
            deadline = time.monotonic() + 30
            while c.read_pipeline_run("shop", run.id).status == "running":
                assert time.monotonic() < deadline, "the dead runner's run stayed running"
                time.sleep(0.2)
            ended = c.read_pipeline_run("shop", run.id)
            expired = c.list_audit(action="pipeline.run.expire")
    finally:
        child.kill()
        child.wait()
    assert ended.status == "failed" and "stopped renewing the run's lease" in ended.error
    assert ended.finished_at is not None and ended.lease_s is None
    assert [(e.actor, e.resource) for e in expired] == [
        ("system", f"project:shop/pipeline:big_orders/run:{run.id}")
    ]


@pytest.mark.slow
def test_a_pipeline_runs_as_a_job_on_the_scheduler(cli: Cli, tmp_path: Path) -> None:
    path = _pipeline(tmp_path, cli)
    # the job finds this checkout's `underlay` (what a node has installed) through these
    bin_dir = Path(sys.executable).parent
    env = [
        "--env", f"PATH={bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "--env", f"PYTHONPATH={SRC}",
    ]  # fmt: skip
    submitted = cli("pipelines", "run", str(path), "-p", "shop", "-q", *env)
    job_id = int(submitted.stdout.strip())
    waited = cli("jobs", "wait", str(job_id), "-p", "shop", "--timeout", "90")
    assert "succeeded" in waited.stdout, cli("jobs", "logs", str(job_id)).stdout
    (run,) = as_json(cli("pipelines", "runs", "-p", "shop", "--json"))
    assert run["job_id"] == job_id and run["status"] == "succeeded"
    assert (run["rows_in"], run["rows_out"], run["output_version"]) == (10, 7, 0)

    report = cli("pipelines", "run", str(path), "-p", "shop", "-q", "--wait", *env).stdout
    assert report.splitlines()[0].startswith(f"pipeline big_orders run 2 (job {job_id + 1}):")
    assert "output: big_orders@1 (rows in 10, out 7" in report

    late = cli("pipelines", "run", str(path), "-p", "shop", "-q", "--wait", "--timeout", "0.01",
               *env, ok=False)  # fmt: skip
    assert late.returncode == 124
    assert_one_line_error(late, "timed out", f"job {job_id + 2} goes on")
    assert "succeeded" in cli("jobs", "wait", str(job_id + 2), "--timeout", "90").stdout
