"""``underlay simulate`` driven as a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import underlay as underlay_package
from underlay.compute.simulator.builtin import PACKAGED_TRACES, default_traces_dir

KEYS = {
    "offered_load",
    "offered_load_weekly",
    "avg_jct_s",
    "median_jct_s",
    "p95_jct_s",
    "avg_queue_s",
    "makespan_s",
    "gpu_utilization",
    "fragmentation",
    "jain_fairness",
    "preemptions",
    "energy_kwh",
}


def underlay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "underlay.cli.main", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def side_by_side(*runs: tuple[str, ...]) -> list[dict[str, object]]:
    """Replays run at once, each in its own process (they are independent and CPU-bound), and
    their JSON reports in the order given."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(runs)) as pool:
        done = list(pool.map(lambda args: underlay(*args, "--json"), runs))
    for result in done:
        assert result.returncode == 0, result.stderr
    return [json.loads(result.stdout) for result in done]


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "mine.csv"
    path.write_text(
        "id,project,submit_s,duration_s,gpus,gpu_milli\n"
        "a,vision,0,100,1,\n"
        "b,nlp,0,100,,500\n"
        "c,nlp,10,50,1,\n"
        "oops,nlp,later,50,1,\n"
    )
    return path


def test_json_output_has_every_measure(trace_file: Path):
    done = underlay("--trace", str(trace_file), "--cluster", "1x2xA100", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) >= KEYS
    assert report["finished"] == 3
    assert report["skipped_rows"] == 1
    assert report["policy"] == "default"


def test_the_table_names_the_measures(trace_file: Path):
    done = underlay("--trace", str(trace_file), "--cluster", "1x2xA100", "--policy", "fifo")
    assert done.returncode == 0, done.stderr
    assert "avg JCT (s)" in done.stdout and "Jain's fairness" in done.stdout
    assert "offered load (total)" in done.stdout and "offered load, busiest week" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trace", "nope.csv"], "error: trace 'nope.csv' is neither a built-in trace"),
        (["--policy", "best"], "error: unknown policy 'best'; choose one of: default, fifo"),
        (["--cluster", "8xA100"], "error: cluster spec group '8xA100' is not COUNTxGPUSxTYPE"),
        (["--low-carbon", "night"], "error: window 'night' is not HH:MM-HH:MM"),
        (["--interval", "-1"], "error: --interval and --restart-overhead must not be negative"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(trace_file: Path, args, message):
    base = {"--trace": str(trace_file), "--cluster": "1x2xA100"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    done = underlay(*[item for pair in base.items() for item in pair])
    assert done.returncode == 2
    assert done.stderr.startswith(message)
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_a_missing_traces_folder_is_one_line_and_exit_code_2(tmp_path: Path):
    done = underlay("--trace", "philly", env={"UNDERLAY_TRACES_DIR": str(tmp_path / "none")})
    assert done.returncode == 2
    assert "set UNDERLAY_TRACES_DIR or pass --traces-dir" in done.stderr


def test_philly_runs_from_the_packaged_files_alone(tmp_path: Path):
    # A plain install: the package copied away from the checkout (no ../shared beside it),
    # another working directory and no UNDERLAY_TRACES_DIR.
    site = tmp_path / "site"
    shutil.copytree(
        Path(underlay_package.__file__).parent,
        site / "underlay",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    env = {k: v for k, v in os.environ.items() if k != "UNDERLAY_TRACES_DIR"}
    env["PYTHONPATH"] = str(site)
    fast = ["--interval", "86400", "--cluster", "64x8xP100", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "underlay.cli.main", "simulate", "--trace", "philly", *fast],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["trace"] == "philly"
    assert report["jobs"] == 15264 and report["skipped_rows"] == 0


def test_the_packaged_philly_files_carry_their_licence_and_attribution():
    readme = PACKAGED_TRACES / "philly-derived" / "README.md"
    text = readme.read_text()
    assert "CC-BY-4.0" in text and "MIT" in text and "Jeon et al." in text
    assert sorted(p.name for p in readme.parent.glob("*.csv.gz")) == [
        "philly_duration_gpus_ge1h.csv.gz",
        "philly_runtime.csv.gz",
        "philly_vc_arrivals.csv.gz",
        "philly_vc_nodes.csv.gz",
    ]


needs_traces = pytest.mark.skipif(
    not default_traces_dir().is_dir(), reason="the real traces are not checked out beside the repo"
)


@pytest.mark.slow
@needs_traces
def test_philly_default_policy_beats_fifo_threefold_with_fairness_no_worse():
    fifo, ours = side_by_side(("--trace", "philly", "--policy", "fifo"), ("--trace", "philly"))
    assert ours["avg_jct_s"] * 3 <= fifo["avg_jct_s"]
    assert ours["jain_fairness"] >= fifo["jain_fairness"]


@pytest.mark.slow
@needs_traces
def test_openb_default_policy_leaves_fewer_gpus_unallocatable_than_first_fit():
    first_fit, ours = side_by_side(
        ("--trace", "openb", "--policy", "first-fit"), ("--trace", "openb")
    )
    assert ours["unallocated_gpus"] < first_fit["unallocated_gpus"]


def test_the_preemption_livelock_trace_replays_with_at_most_one_preemption(tmp_path: Path):
    # Issue 9: Y, above project b's guarantee, used to preempt W and X (within it) every
    # minute for ever; 1,607 preemptions and Y never started before W and X finished.
    path = tmp_path / "livelock.csv"
    path.write_text(
        "id,project,submit_s,duration_s,gpus,gang\n"
        "Z,a,0,100000,8,1\n"
        "W,b,0,100000,8,1\n"
        "X,b,0,100000,8,1\n"
        "Y,b,3600,3600,8,2\n"
    )
    done = underlay("--trace", str(path), "--cluster", "4x8xA100", "--policy", "default", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["finished"] == 4
    assert report["preemptions"] <= 1
    assert report["makespan_s"] <= 103_620.0  # no worse than first-fit on this trace


def test_skipped_rows_are_listed_on_stderr_with_their_lines_and_reasons(tmp_path: Path):
    path = tmp_path / "bad.csv"
    rows = [f"bad{i},p,soon,10,1" for i in range(7)]
    path.write_text(
        "id,project,submit_s,duration_s,gpus\n"
        'ok,"a\nb",0,10,1\n'  # lines 2-3
        + "\n".join(rows)  # lines 4-10
        + "\n"
    )
    done = underlay("--trace", str(path), "--cluster", "1x1xA100", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["skipped_rows"] == 7
    assert report["skipped"][0] == {"line": 4, "reason": "submit_s 'soon' is not a number"}
    lines = done.stderr.splitlines()
    assert lines[0] == "skipped 7 trace row(s) that could not be read:"
    assert lines[1] == "  line 4: submit_s 'soon' is not a number"
    assert lines[5] == "  line 8: submit_s 'soon' is not a number"
    assert lines[6] == "  ... and 2 more"


def test_replay_progress_goes_to_stderr_and_json_on_stdout_is_unchanged(trace_file: Path):
    args = ("--trace", str(trace_file), "--cluster", "2x2xA100", "--json")
    plain = underlay(*args)
    forced = underlay(*args, env={"FORCE_COLOR": "1", "COLUMNS": "200"})
    assert plain.returncode == forced.returncode == 0, forced.stderr
    assert "jobs ended" not in plain.stderr  # a pipe: no bar
    assert "jobs ended" in forced.stderr and "3/3" in forced.stderr
    assert forced.stdout.count("\n") == 1 and forced.stdout.endswith("}\n")
    timing = {"wall_s", "decide_ms_avg"}  # measured, so never the same twice
    shown, expected = json.loads(forced.stdout), json.loads(plain.stdout)
    assert {k: v for k, v in shown.items() if k not in timing} == {
        k: v for k, v in expected.items() if k not in timing
    }
