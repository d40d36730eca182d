"""``underlay pipelines`` with ML pipelines as a user runs it: child processes, a live server,
and (one slow test) every step as a real job on the scheduler's local executor."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cli.test_cli import Cli, as_json, assert_one_line_error
from tests.ml.pipelines_fixture import PIPELINE
from underlay.config import ComputeSettings, Settings

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only for the CLI: the backends are covered by the SDK tests."""
    return f"sqlite:///{tmp_path / 'underlay.db'}"


@pytest.fixture
def settings(settings: Settings) -> Settings:  # type: ignore[override]
    """A live local agent, so steps can run as jobs."""
    settings.compute = ComputeSettings(
        node_name="node-1", loop_interval_s=0.1, heartbeat_interval_s=0.2, grace_s=3.0
    )
    return settings


def _write(tmp_path: Path, text: str, name: str = "pipeline.py") -> Path:
    folder = tmp_path / "ml"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_run_local_then_ls_show_and_logs(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "shop")
    path = _write(tmp_path, PIPELINE)
    out = cli("pipelines", "run", str(path), "-p", "shop", "--local", "-q").stdout.splitlines()
    assert out[0].startswith("pipeline line run m1 (local): succeeded in ")
    assert out[1].startswith("  step load: succeeded, ")
    assert any(line.startswith("  step fit.1: succeeded, ") and "error=0" in line for line in out)
    assert out[-1] == "  sweep fit: best fit.1 (error=0, min) of 3 grid trials"

    again = cli("pipelines", "run", str(path), "-p", "shop", "--local", "-P", "n=20")
    assert "  step load: cached, skipped (outputs of run m1)" in again.stdout
    assert "step evaluate: cached, skipped (outputs of run m1)" in again.stderr  # as it goes
    runs = as_json(cli("pipelines", "ls", "-p", "shop", "--json"))
    assert [(r["id"], r["status"], r["params"]) for r in runs] == [
        (2, "succeeded", {"n": 20}),
        (1, "succeeded", {}),
    ]
    assert "m2" in cli("pipelines", "ls", "line", "-p", "shop").stdout
    shown = as_json(cli("pipelines", "show", "m1", "-p", "shop", "--json"))
    assert shown["sweeps"][0]["best"] == "fit.1" and len(shown["steps"]) == 6
    assert (
        cli("pipelines", "show", "m2", "-p", "shop").stdout.splitlines()[1] == '  params: {"n": 20}'
    )
    logs = cli("pipelines", "logs", "m1", "load", "-p", "shop").stdout
    assert logs == "== step load: no job (succeeded, ran in-process)\n"

    assert_one_line_error(
        cli("pipelines", "show", "m9", "-p", "shop", ok=False), "ML pipeline run 9 not found"
    )
    assert_one_line_error(
        cli("pipelines", "show", "nine", "-p", "shop", ok=False),
        "'nine' is not a run id (3) or an ML run (m3)",
    )
    assert_one_line_error(
        cli("pipelines", "logs", "m1", "nope", "-p", "shop", ok=False), "run m1 has no step 'nope'"
    )
    bad = cli("pipelines", "run", str(path), "-p", "shop", "--local", "-P", "size=3", ok=False)
    assert_one_line_error(bad, "pipeline line takes no parameter 'size'")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            PIPELINE.replace('@step(memory="256Mi")', '@step(memory="lots")'),
            "pipeline.py: step load: memory must be MiB or like '512Mi' or '2Gi', not 'lots'",
        ),
        (
            PIPELINE.replace("evaluate(best, test)", "evaluate(best, ref('split.valid'))").replace(
                "import log_metric,", "import log_metric, ref,"
            ),
            "step evaluate: input test: step split has no output 'valid' (outputs: train, test)",
        ),
        (
            PIPELINE.replace("data = load(n)", "data = load(ref('evaluate'))").replace(
                "import log_metric,", "import log_metric, ref,"
            ),
            "pipeline line has a cycle: evaluate -> load -> split -> fit -> evaluate",
        ),
        ("import nothing_here\n", "pipeline.py failed to load: ModuleNotFoundError"),
        # an ETL pipeline in Python is still one, with the ETL loader's errors
        (
            "from underlay.data.pipelines import Pipeline\n"
            "pipeline = Pipeline(name='x', sources={'o': 'orders'}, output={'tabel': 'y'})\n",
            "pipeline.py: output.table: Field required",
        ),
        ("x = 1\n", "pipeline.py defines no `pipeline = Pipeline(...)`"),
    ],
)
def test_bad_pipelines_are_clear_errors_before_anything_runs(
    tmp_path: Path, text: str, message: str
) -> None:
    """What `pipelines run` loads and checks first (in-process here; the CLI case below)."""
    from underlay.data.pipelines import load as load_etl
    from underlay.errors import InvalidInput
    from underlay.ml.pipelines.loader import find

    path = _write(tmp_path, text)
    with pytest.raises(InvalidInput) as raised:
        found = find(path)
        found.graph() if found is not None else load_etl(path)
    assert message in str(raised.value)


def test_a_bad_pipeline_is_a_one_line_error_and_records_nothing(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "shop")
    path = _write(tmp_path, PIPELINE.replace('@step(memory="256Mi")', '@step(memory="lots")'))
    refused = cli("pipelines", "run", str(path), "-p", "shop", ok=False)
    assert_one_line_error(refused, "pipeline.py: step load: memory must be MiB or like '512Mi'")
    path.write_text("x = 1\n")
    refused = cli("pipelines", "run", str(path), "-p", "shop", "--local", ok=False)
    assert_one_line_error(refused, "pipeline.py defines no `pipeline = Pipeline(...)`")
    assert as_json(cli("pipelines", "ls", "-p", "shop", "--json")) == []


def test_a_failed_local_step_exits_1_with_one_error_line(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "shop")
    text = PIPELINE.replace("@step\ndef evaluate", "@step(retries=1)\ndef evaluate").replace(
        "    xs, ys = test.column",
        "    raise RuntimeError('metric server down')\n    xs, ys = test.column",
    )
    failed = cli(
        "pipelines", "run", str(_write(tmp_path, text)), "-p", "shop", "--local", "-q", ok=False
    )
    assert failed.returncode == 1
    assert_one_line_error(
        failed,
        "pipeline line run m1 failed: step evaluate: after 2 attempts: RuntimeError: metric "
        "server down",
    )
    assert "  step evaluate: failed, 2 attempts" in failed.stdout


def test_a_step_no_node_can_run_fails_with_the_schedulers_reason(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "shop")
    text = PIPELINE.replace('@step(memory="256Mi")', '@step(memory="256Mi", gpus=1)')
    failed = cli("pipelines", "run", str(_write(tmp_path, text)), "-p", "shop", "-q", ok=False)
    assert failed.returncode == 1
    assert_one_line_error(
        failed,
        "run m1 failed: step load: its job was refused: this job can never run here: asks for "
        "accelerators but no node of this cluster has any",
    )
    assert "  step split: skipped: input data comes from step load, which failed" in failed.stdout
    assert as_json(cli("jobs", "ls", "-p", "shop", "--json")) == []


JOBS = """
import pyarrow as pa

from underlay.ml.pipelines import pipeline, step, sweep


@step(memory="256Mi")
def load() -> pa.Table:
    return pa.table({"x": [1, 2, 3], "y": [3, 5, 7]})


@step(cpus=0.5)
def fit(data: pa.Table, slope: float) -> dict:
    xs, ys = data.column("x").to_pylist(), data.column("y").to_pylist()
    return {"slope": slope, "error": sum(abs(y - slope * x - 1) for x, y in zip(xs, ys))}


@step
def report(model: dict) -> str:
    print("best slope", model["slope"])
    return f"slope {model['slope']}"


@pipeline
def jobs():
    best = sweep(fit, load(), grid={"slope": [2.0, 3.0]}, metric="error", mode="min")
    report(best)
"""

FAILING = """
from underlay.ml.pipelines import pipeline, step


@step(retries=1)
def flaky() -> int:
    raise ValueError("no data today")


@pipeline
def failing():
    flaky()
"""


@pytest.mark.slow
def test_steps_run_as_jobs_cached_on_the_second_run_and_a_failure_keeps_its_logs(
    cli: Cli, tmp_path: Path
) -> None:
    cli("projects", "create", "shop")
    # the jobs find this checkout's `underlay` (what a node has installed) through these
    bin_dir = Path(sys.executable).parent
    env = [
        "--env",
        f"PATH={bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "--env",
        f"PYTHONPATH={SRC}",
    ]
    path = _write(tmp_path, JOBS)
    first = cli(
        "pipelines", "run", str(path), "-p", "shop", "-q", "--json", "--timeout", "120", *env
    )
    run = as_json(first)
    assert run["status"] == "succeeded", run
    steps = {s["key"]: s for s in run["steps"]}
    assert list(steps) == ["load", "fit.0", "fit.1", "report"]
    assert all(s["job_id"] and s["status"] == "succeeded" for s in steps.values())
    assert run["sweeps"][0]["best"] == "fit.0"
    assert steps["fit.0"]["resources"]["cpus"] == 0.5
    job = as_json(cli("jobs", "show", str(steps["fit.0"]["job_id"]), "-p", "shop", "--json"))
    assert (job["cpus"], job["memory_mib"]) == (0.5, 512)
    logs = cli("pipelines", "logs", "m1", "report", "-p", "shop").stdout
    assert "best slope 2.0" in logs and "step report succeeded" in logs

    jobs_before = len(as_json(cli("jobs", "ls", "-p", "shop", "--json")))
    second = as_json(cli("pipelines", "run", str(path), "-p", "shop", "-q", "--json", *env))
    assert {s["status"] for s in second["steps"]} == {"cached"}
    assert {s["job_id"] for s in second["steps"]} == {None}
    assert len(as_json(cli("jobs", "ls", "-p", "shop", "--json"))) == jobs_before

    failing = _write(tmp_path, FAILING, "failing.py")
    failed = cli(
        "pipelines", "run", str(failing), "-p", "shop", "-q", "--timeout", "120", *env, ok=False
    )
    assert failed.returncode == 1
    line = assert_one_line_error(failed, "pipeline failing run m3 failed: step flaky: job ")
    assert line.endswith("failed after 2 attempts: step flaky failed: ValueError: no data today")
    logs = cli("pipelines", "logs", "m3", "-p", "shop").stdout
    assert logs.count('raise ValueError("no data today")') == 2  # each attempt's traceback
    assert "── attempt 1 ──" in logs and "── attempt 2 ──" in logs

    slow = _write(
        tmp_path,
        FAILING.replace('raise ValueError("no data today")', "import time; time.sleep(60)"),
        "slow.py",
    )
    late = cli("pipelines", "run", str(slow), "-p", "shop", "-q", "--timeout", "2", *env, ok=False)
    assert late.returncode == 124
    assert_one_line_error(late, "timed out: the pipeline timed out", "run m4 failed")
    shown = as_json(cli("pipelines", "show", "m4", "-p", "shop", "--json"))
    assert shown["status"] == "failed" and shown["steps"][0]["status"] == "failed"
    job_id = shown["steps"][0]["job_id"]
    assert as_json(cli("jobs", "show", str(job_id), "-p", "shop", "--json"))["state"] == "cancelled"
