"""The serving benchmarks keep running: ``benchmarks/serving.py`` in its quick mode against the
floor, its load generators (wrk where installed, the asyncio one everywhere) counting answers
and errors, a peer without its interpreter skipped with a printed line, and
``benchmarks/api_overhead.py`` on two of its layers. Nothing here asserts on time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
GENERATORS = [
    "asyncio",
    pytest.param("wrk", marks=pytest.mark.skipif(not shutil.which("wrk"), reason="no wrk")),
]


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})},
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("generator", GENERATORS)
def test_the_quick_run_serves_the_model_from_the_floor_and_prints_the_table(
    tmp_path: Path, generator: str
) -> None:
    figures = tmp_path / "figures.json"
    out = _run(
        "serving.py",
        *("--quick", "--targets", "floor", "--loadgen", generator, "--json", str(figures)),
    )
    assert f"load generator: {generator}, 1 s a point" in out
    assert "\nfloor " in out and "per-request overhead of trivial routes" in out
    floor = json.loads(figures.read_text())["floor"]
    points = ["1 row c=1", "1 row c=8", "1 row c=64", "100 rows c=8"]
    assert set(floor) == {*points, "GET /health c=1", "GET /health c=64"}
    for label, result in floor.items():
        assert result["requests"] > 0 and result["errors"] == 0, label


@pytest.mark.slow
def test_a_peer_without_its_interpreter_is_skipped_with_a_line(tmp_path: Path) -> None:
    absent = str(tmp_path / "nowhere" / "python")
    env = {"UNDERLAY_BENCH_MLFLOW_PYTHON": absent, "UNDERLAY_BENCH_MLSERVER_PYTHON": absent}
    out = _run("serving.py", "--quick", "--targets", "mlflow", "mlserver", env=env)
    assert "mlflow: skipped: no interpreter at .venv-mlflow/bin/python" in out
    assert "set UNDERLAY_BENCH_MLFLOW_PYTHON" in out
    assert "mlserver: skipped: no interpreter at .venv-mlserver/bin/python" in out


@pytest.mark.slow
@pytest.mark.parametrize("generator", GENERATORS)
def test_the_load_generators_count_error_answers(tmp_path: Path, generator: str) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import loadgen
        from serving_peers import floor
    finally:
        sys.path.remove(str(BENCH))
    with floor(tmp_path, None) as served:  # no model: /health only, anything else 404
        url = served.trivial["GET /health"].url
        ok = loadgen.run(loadgen.Load(url), 4, 1, generator=generator)
        missing = loadgen.run(loadgen.Load(url + "-missing"), 4, 1, generator=generator)
    assert ok.requests > 0 and ok.errors == 0 and ok.p50_ms <= ok.p99_ms
    assert missing.requests > 0 and missing.errors == missing.requests
    with pytest.raises(ValueError, match=r"only talks to 127\.0\.0\.1"):
        loadgen.run(loadgen.Load("http://example.com/"), 1, 1, generator=generator)


@pytest.mark.slow
def test_the_overhead_benchmark_measures_layers_against_the_bare_app() -> None:
    out = _run(
        "api_overhead.py", "--only", "bare", "+depends", "--duration", "1", "--loadgen", "asyncio"
    )
    rows = [row for row in out.splitlines() if row.startswith(("bare ", "+depends "))]
    lines = {row.split()[0]: row for row in rows}
    assert lines["bare"].split()[-2:] == ["1.00x", "+0"]
    assert lines["+depends"].split()[-1].startswith(("+", "-"))


def test_processes_left_in_sessions_of_their_own_are_stopped(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from serving_peers import stop_strays
    finally:
        sys.path.remove(str(BENCH))
    marker = str(tmp_path / "home")
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time, sys; time.sleep(120)", marker],
        start_new_session=True,  # as underlay's replica shims: not in the server's group
    )
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stop_strays(marker)
        assert stray.wait(15) is not None
        assert bystander.poll() is None
    finally:
        for proc in (stray, bystander):
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_the_replica_hop_benchmark_compares_the_two_clients() -> None:
    out = _run("replica_hop.py", "--calls", "160")
    for concurrency in (1, 16):
        assert f"c={concurrency}: httpx spends " in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("httpx", "lean"))]
    assert len(rows) == 4 and all(int(row[-1].replace(",", "")) > 0 for row in rows)


@pytest.mark.slow
def test_the_ray_serve_benchmark_compares_or_says_what_it_needs() -> None:
    """Where Ray Serve imports, it hosts the model beside our replica and both give the same
    answers (the script asserts it); where it does not, the script says so and exits 0."""
    pytest.importorskip("ray")
    out = _run("ray_serve_hop.py", "--calls", "40")
    if out.startswith("skipped: Ray Serve does not import here"):
        assert "pip install 'ray[serve]'" in out
        return
    figures = json.loads(out[out.index("{") :])
    for rows in ("1 row", "32 rows"):
        assert figures[rows]["replica"]["rps"] > 0 and figures[rows]["serve"]["rps"] > 0
    assert "Serve's new listeners beyond 127.0.0.1" in figures
