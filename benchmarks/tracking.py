"""Experiment tracking against MLflow, measured in the same run, with each one's own client.

Starts ``mlflow server`` (SQLite backend) from a separate virtual environment (MLflow pins
versions our environment cannot take), and ``underlay up`` twice, on SQLite and on
PostgreSQL, and runs the same workload against each over keep-alive connections:

* **per-step**: a training loop logs one point per call (MLflow: ``log_metric``, synchronous;
  underlay: ``run.log(step=i, loss=...)``, buffered, time includes the final flush and end);
* **bulk**: points in batches (MLflow: ``log_batch`` of 1,000, its maximum; underlay:
  ``run.log_batch`` of whole columns, sent 20,000 points a request);
* **history**: read back one key of 100,000 points;
* **search**: 1,000 runs with 10 params and 10 metrics each, then a search with a metric
  filter (``metrics.m0 > 0.5``) returning the matching runs with their params and metrics.

History and search are each called ``1 + --repeat`` times (default 1 + 3) on both sides: the
figure is the median of the repeated calls, and the first (cold: imports, statement caches)
call is printed beside it.

Targets (issue 12): per-step >= 500x MLflow's points/s, bulk >= 50x on SQLite and on
PostgreSQL, history >= 50x faster, search >= 20x faster.

MLflow's interpreter comes from ``UNDERLAY_BENCH_MLFLOW_PYTHON`` (default
``.venv-mlflow/bin/python``); create one with::

    python -m venv .venv-mlflow && .venv-mlflow/bin/pip install 'mlflow>=3,<4'

PostgreSQL: ``UNDERLAY_BENCH_PG`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/
postgres``) is where a throw-away database is created and dropped; ``--no-postgres`` skips it.

    python benchmarks/tracking.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import TOKEN, free_port, serve

import underlay
from underlay.client import Client

MLFLOW_WORKLOAD = r"""
import json, sys, time
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

a = json.loads(sys.argv[1])
c = MlflowClient(a["url"])
exp = c.create_experiment(f"bench-{time.time_ns()}")
out = {}

run = c.create_run(exp).info.run_id
t = time.perf_counter()
for i in range(a["steps"]):
    c.log_metric(run, "loss", 1.0 / (i + 1), step=i)
out["step_s"] = time.perf_counter() - t
c.set_terminated(run)

run = c.create_run(exp).info.run_id
now = int(time.time() * 1000)
t = time.perf_counter()
for start in range(0, a["bulk"], 1000):
    c.log_batch(run, metrics=[Metric("loss", 1.0 / (i + 1), now, i)
                              for i in range(start, min(start + 1000, a["bulk"]))])
out["bulk_s"] = time.perf_counter() - t
c.set_terminated(run)

times = []
for _ in range(1 + a["repeat"]):
    t = time.perf_counter()
    history = c.get_metric_history(run, "loss")
    times.append(time.perf_counter() - t)
out["history_first_s"] = times[0]
out["history_s"] = sorted(times[1:])[len(times[1:]) // 2]
out["history_points"] = len(history)

exp2 = c.create_experiment(f"search-{time.time_ns()}")
t = time.perf_counter()
for r in range(a["runs"]):
    rid = c.create_run(exp2).info.run_id
    c.log_batch(rid, metrics=[Metric(f"m{k}", ((r * 7 + k * 13) % 100) / 100, now, 0)
                              for k in range(10)],
                params=[Param(f"p{k}", str((r + k) % 5)) for k in range(10)])
out["setup_s"] = time.perf_counter() - t
times = []
for _ in range(1 + a["repeat"]):
    t = time.perf_counter()
    found = c.search_runs([exp2], "metrics.m0 > 0.5", max_results=1000)
    times.append(time.perf_counter() - t)
out["search_first_s"] = times[0]
out["search_s"] = sorted(times[1:])[len(times[1:]) // 2]
out["search_n"] = len(found)
print(json.dumps(out))
"""


def mlflow_python() -> str:
    python = os.environ.get("UNDERLAY_BENCH_MLFLOW_PYTHON", ".venv-mlflow/bin/python")
    if not Path(python).exists():
        raise SystemExit(
            f"no MLflow interpreter at {python}: create one with\n"
            "  python -m venv .venv-mlflow && .venv-mlflow/bin/pip install 'mlflow>=3,<4'\n"
            "or point UNDERLAY_BENCH_MLFLOW_PYTHON at one"
        )
    return python


@contextmanager
def mlflow_server(python: str, root: Path, workers: int) -> Iterator[str]:
    port = free_port()
    mlflow = str(Path(python).parent / "mlflow")
    cmd = [
        mlflow,
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root",
        str(root / "mlartifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    log = (root / "mlflow.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mlflow server did not start; see {root / 'mlflow.log'}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run_mlflow(python: str, url: str, args: argparse.Namespace) -> dict[str, float]:
    spec = {
        "url": url,
        "steps": args.mlflow_steps,
        "bulk": args.history,
        "runs": args.runs,
        "repeat": args.repeat,
    }
    done = subprocess.run(
        [python, "-c", MLFLOW_WORKLOAD, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the MLflow workload failed:\n{done.stderr[-4000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def underlay_server(root: Path, database_url: str | None) -> Iterator[str]:
    port = free_port()
    extra = {"UNDERLAY_STORE__URL": database_url} if database_url else {}
    proc = serve(root, port, extra)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_underlay(url: str, args: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    with Client(url, TOKEN) as c:
        c.create_project("bench")
        # per-step: one point per call from a training loop, until stored and ended
        t = time.perf_counter()
        with underlay.start_run("bench", "steps", client=c, record_environment=False) as run:
            for i in range(args.steps):
                run.log(step=i, loss=1.0 / (i + 1))
        out["step_s"] = time.perf_counter() - t
        # bulk: whole columns, 10 keys of --history points each
        values = [1.0 / (i + 1) for i in range(args.history)]
        t = time.perf_counter()
        with underlay.start_run("bench", "bulk", client=c, record_environment=False) as run:
            for k in range(args.bulk_keys):
                run.log_batch(f"k{k}", values)
        out["bulk_s"] = time.perf_counter() - t
        out["bulk_points"] = args.bulk_keys * args.history
        times = []
        for _ in range(1 + args.repeat):
            t = time.perf_counter()
            history = c.metric_history("bench", run.id, "k0")
            times.append(time.perf_counter() - t)
        out["history_first_s"], out["history_s"] = times[0], median(times[1:])
        out["history_points"] = len(history.step)
        # search: the same 1,000 runs as MLflow's
        t = time.perf_counter()
        now = int(time.time() * 1000)
        for r in range(args.runs):
            created = c.create_run(
                "bench", "search", params={f"p{k}": str((r + k) % 5) for k in range(10)}
            )
            c.log_batch(
                "bench",
                created.id,
                {
                    "batch_id": secrets.token_hex(16),
                    "metrics": {
                        "keys": [f"m{k}" for k in range(10)],
                        "key": list(range(10)),
                        "step": [0] * 10,
                        "value": [((r * 7 + k * 13) % 100) / 100 for k in range(10)],
                        "timestamp": [now] * 10,
                    },
                },
            )
        out["setup_s"] = time.perf_counter() - t
        times = []
        for _ in range(1 + args.repeat):
            t = time.perf_counter()
            found = c.list_runs("bench", experiment="search", filter="metrics.m0 > 0.5")
            times.append(time.perf_counter() - t)
        out["search_first_s"], out["search_s"] = times[0], median(times[1:])
        out["search_n"] = len(found)
    return out


@contextmanager
def postgres_database() -> Iterator[str]:
    from sqlalchemy import create_engine, text

    admin_url = os.environ.get(
        "UNDERLAY_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    name = f"underlay_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def rates(m: dict[str, float], steps: int, bulk: float) -> dict[str, float]:
    return {
        "step": steps / m["step_s"],
        "bulk": bulk / m["bulk_s"],
        "history": m["history_s"],
        "search": m["search_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000, help="underlay per-step points")
    parser.add_argument("--mlflow-steps", type=int, default=500, help="MLflow per-step points")
    parser.add_argument("--history", type=int, default=100_000, help="points per history key")
    parser.add_argument("--bulk-keys", type=int, default=10, help="underlay bulk: keys")
    parser.add_argument("--runs", type=int, default=1000, help="runs to search over")
    parser.add_argument("--mlflow-workers", type=int, default=1)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="history and search: timed again this many times after the first call; the "
        "median is the figure (the first, cold call is printed beside it)",
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    random.seed(args.seed)
    python = mlflow_python()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ul-track-") as tmp:
        root = Path(tmp)
        (root / "ml").mkdir()
        with mlflow_server(python, root / "ml", args.mlflow_workers) as url:
            raw = run_mlflow(python, url, args)
        results["mlflow"] = rates(raw, args.mlflow_steps, args.history) | {"raw": raw}  # type: ignore[dict-item]
        print(f"mlflow: {json.dumps(raw)}", flush=True)
        with underlay_server(root / "sqlite", None) as url:
            raw = run_underlay(url, args)
        results["sqlite"] = rates(raw, args.steps, raw["bulk_points"]) | {"raw": raw}  # type: ignore[dict-item]
        print(f"underlay sqlite: {json.dumps(raw)}", flush=True)
        if not args.no_postgres:
            with postgres_database() as pg, underlay_server(root / "pg", pg) as url:
                raw = run_underlay(url, args)
            results["postgres"] = rates(raw, args.steps, raw["bulk_points"]) | {"raw": raw}  # type: ignore[dict-item]
            print(f"underlay postgres: {json.dumps(raw)}", flush=True)
    report(results, args)


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    ml = results["mlflow"]
    backends = [b for b in ("sqlite", "postgres") if b in results]
    print()
    print(f"command: python benchmarks/tracking.py {shlex.join(sys.argv[1:])}")
    print(f"mlflow server: SQLite backend, {args.mlflow_workers} worker(s), its own client")
    header = f"{'workload':<34}{'MLflow':>14}" + "".join(f"{b:>14}{'ratio':>9}" for b in backends)
    print(header + f"{'target':>9}")
    rows = [
        ("per-step logging (points/s)", "step", True, 500),
        ("bulk logging (points/s)", "bulk", True, 50),
        (f"history of {args.history:,} points (s)", "history", False, 50),
        (f"search over {args.runs:,} runs (s)", "search", False, 20),
    ]
    for label, key, higher_is_better, target in rows:
        line = f"{label:<34}{ml[key]:>14,.3f}"
        for b in backends:
            value = results[b][key]
            ratio = value / ml[key] if higher_is_better else ml[key] / value
            line += f"{value:>14,.3f}{ratio:>8,.0f}x"
        print(line + f"{target:>8}x")
    print(
        f"search matches: MLflow {ml['raw']['search_n']}, "
        + ", ".join(f"{b} {results[b]['raw']['search_n']}" for b in backends)
    )
    for key, what in (("history", "history"), ("search", "search")):
        print(
            f"first (cold) {what} call (s): MLflow {ml['raw'][f'{key}_first_s']:.3f}, "
            + ", ".join(f"{b} {results[b]['raw'][f'{key}_first_s']:.3f}" for b in backends)
        )
    print(
        f"setup of the searched runs (s): MLflow {ml['raw']['setup_s']:.1f}, "
        + ", ".join(f"{b} {results[b]['raw']['setup_s']:.1f}" for b in backends)
    )


if __name__ == "__main__":
    main()
