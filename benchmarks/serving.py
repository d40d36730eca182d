"""Model serving against its peers, measured in the same run with the same load generator.

Fits one seeded scikit-learn LogisticRegression (20 features) and serves it with:

* ``floor``: a bare FastAPI + uvicorn app, 2 workers, no auth, validation, logging or
  batching (``benchmarks/serving_floor.py``), in this interpreter (uvicorn picks httptools
  and uvloop when they are installed, as underlay's dependencies install them; underlay's
  server then runs them too);
* ``floor-std``: the same app under ``uvicorn[standard]`` (httptools, uvloop), from
  ``UNDERLAY_BENCH_FLOOR_STD_PYTHON`` (default ``.venv-floor-std/bin/python``), to show what
  the HTTP parser and event loop are worth;
* ``mlflow``: ``mlflow models serve`` (2 workers), from ``UNDERLAY_BENCH_MLFLOW_PYTHON``
  (default ``.venv-mlflow/bin/python``, the convention of ``benchmarks/tracking.py``);
* ``mlserver-batch`` / ``mlserver``: Seldon MLServer with mlserver-sklearn, adaptive batching
  (32 requests, 5 ms) and without, from ``UNDERLAY_BENCH_MLSERVER_PYTHON`` (default
  ``.venv-mlserver/bin/python``);
* ``underlay``: ``underlay up`` with the model logged, registered (signed) and deployed with
  ``underlay deploy`` (2 replicas, batching 32 / 5 ms, a tenth of the requests written to
  the prediction log), served on the JSON predict route with a bearer token. Its trivial
  routes (``/healthz`` without a token, ``/api/v1/users/me`` with one, through the whole
  middleware and auth stack) give the API's per-request overhead against the floor's
  ``GET /health``.

The peers pin versions our environment cannot take (MLflow downgrades pyarrow), so each lives
in its own virtual environment (MLServer 1.7.1's inference workers die at start with uvloop
0.22+, SeldonIO/MLServer#2286, hence the pin); a peer whose interpreter is absent is skipped
with a printed line. Create them with::

    python3.11 -m venv .venv-mlflow && .venv-mlflow/bin/pip install 'mlflow>=3,<4'
    python3.11 -m venv .venv-mlserver && .venv-mlserver/bin/pip install mlserver \
        mlserver-sklearn 'uvloop<0.22'
    python3.11 -m venv .venv-floor-std && .venv-floor-std/bin/pip install fastapi \
        'uvicorn[standard]' scikit-learn

Load: closed-loop keep-alive HTTP/1.1 from ``wrk`` (``scripts/ensure-bench-tools.sh``), else
the asyncio generator of ``benchmarks/loadgen.py``; single-row requests at concurrency 1, 8
and 64, and 100-row requests at 8, a few seconds each, only to 127.0.0.1. Every server's
answers are checked against the model's own predictions before it is loaded. Prints
requests/s, p50, p99 and errors per server, and the ratios against the floor and against
MLflow and MLServer. Targets (issue 13): underlay at c=64 >= 0.8 of the floor's requests/s
with p99 <= 30 ms; at c=1 p50 <= 1 ms.

    python benchmarks/serving.py              # everything, 3 s a point
    python benchmarks/serving.py --quick --targets floor
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen
from serving_peers import (
    JSON,
    Served,
    Skip,
    floor,
    free_port,
    idle_cpu,
    mlflow,
    mlserver,
    peer_python,
    process,
    records_body,
    tree_cpu,
)

import underlay
from underlay.client import Client

TOKEN = "ul_bench_" + "0" * 40
FEATURES = 20
POINTS = [("1 row c=1", 1, 1), ("1 row c=8", 1, 8), ("1 row c=64", 1, 64), ("100 rows c=8", 100, 8)]
TRIVIAL_CONCURRENCY = (1, 64)
TARGETS = ("floor", "floor-std", "mlflow", "mlserver-batch", "mlserver", "underlay")
PEERS = ("floor", "mlflow", "mlserver-batch", "mlserver")


def make_data(seed: int, root: Path) -> tuple[np.ndarray, np.ndarray, Path]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, FEATURES))
    w = rng.normal(size=FEATURES)
    y = (x @ w + rng.normal(scale=0.5, size=len(x)) > 0).astype(np.int64)
    path = root / "data.npz"
    np.savez(path, X=x, y=y, seed=np.int64(seed))
    return x, y, path


def fit(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(random_state=seed, max_iter=1000).fit(x, y)


# -- underlay -------------------------------------------------------------------------------


def _register(base: str, model: Any, x: np.ndarray) -> None:
    with Client(base, TOKEN) as c:
        c.create_project("bench")
        example = {f"f{i}": x[:50, i] for i in range(FEATURES)}
        with underlay.start_run("bench", "serving", client=c, record_environment=False) as run:
            run.log_model(model, "model", input_example=example)
        c.register_model("bench", "lr", run=run.id, path="model")
        c.set_alias("bench", "lr", "champion", 1, reason="serving benchmark")


def _deploy(base: str, args: argparse.Namespace) -> None:
    cmd = [sys.executable, "-m", "underlay.cli.main", "deploy", "-p", "bench", "lr"]
    cmd += ["--model", "lr@champion", "--replicas", str(args.replicas)]
    cmd += ["--max-batch", "32", "--max-wait-ms", "5", *shlex.split(args.deploy_args)]
    env = {"UNDERLAY_URL": base, "UNDERLAY_TOKEN": TOKEN}
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise Skip(f"`underlay deploy` failed: {last[0]}")
    if args.log_sample_rate:  # the prediction log: no CLI option for it
        with Client(base, TOKEN) as c:
            c.update_deployment(
                "bench", "lr", log_sample_rate=args.log_sample_rate, reason="serving benchmark"
            )


def _wait_until_serving(url: str, body: bytes, wait_s: float = 180) -> None:
    """Until 20 requests in a row, each on a connection of its own, are answered: with
    ``--underlay-workers`` above 1 each server process learns of the ready replicas itself."""
    deadline = time.monotonic() + wait_s
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    last, served = "", 0
    while time.monotonic() < deadline:
        try:
            answer = httpx.post(url, content=body, headers=headers, timeout=10)
            if answer.status_code == 200:
                served += 1
                if served >= 20:
                    return
                continue
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.TransportError as exc:
            last = str(exc)
        served = 0
        time.sleep(0.5)
    raise Skip(f"the deployment did not serve within {wait_s:.0f} s: {last}")


@contextlib.contextmanager
def underlay_target(
    root: Path, model: Any, x: np.ndarray, args: argparse.Namespace
) -> Iterator[Served]:
    """``underlay up`` (local agent on, so replicas run), the model registered and deployed.
    When deploying fails the trivial routes are still measured, and the reason printed."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "underlay.cli.main", "up", "--port", str(port)]
    cmd += ["--workers", str(args.underlay_workers)]
    env = {"UNDERLAY_HOME": str(root / "home"), "UNDERLAY_ADMIN_TOKEN": TOKEN}
    auth = (("Authorization", f"Bearer {TOKEN}"),)
    home = str(root / "home")  # in the command lines of the replicas' sandbox shims
    with process(cmd, root / "underlay.log", f"{base}/readyz", env=env, sweep=home) as proc:
        trivial = {
            "GET /healthz": loadgen.Load(f"{base}/healthz"),
            "GET /api/v1/users/me +token": loadgen.Load(f"{base}/api/v1/users/me", headers=auth),
        }
        served = Served("underlay", lambda _: loadgen.Load(base), lambda a: [], trivial, proc.pid)
        predict = f"{base}/api/v1/projects/bench/deployments/lr/predict"
        try:
            _register(base, model, x)
            _deploy(base, args)
            _wait_until_serving(predict, records_body(x[:1]))
        except Skip as exc:
            print(f"underlay: no predictions measured: {exc}", flush=True)
            served.predicts = False
        served.request = lambda rows: loadgen.Load(predict, "POST", records_body(rows), JSON + auth)
        served.answers = lambda answer: list(answer["predictions"])
        yield served


# -- measuring ------------------------------------------------------------------------------


def open_target(
    name: str, root: Path, data: Path, model: Any, x: np.ndarray, args: argparse.Namespace
) -> AbstractContextManager[Served]:
    if name == "floor":
        return floor(root, data)
    if name == "underlay":
        return underlay_target(root, model, x, args)
    variable, default = {
        "floor-std": ("UNDERLAY_BENCH_FLOOR_STD_PYTHON", ".venv-floor-std/bin/python"),
        "mlflow": ("UNDERLAY_BENCH_MLFLOW_PYTHON", ".venv-mlflow/bin/python"),
        "mlserver-batch": ("UNDERLAY_BENCH_MLSERVER_PYTHON", ".venv-mlserver/bin/python"),
        "mlserver": ("UNDERLAY_BENCH_MLSERVER_PYTHON", ".venv-mlserver/bin/python"),
    }[name]
    python = peer_python(variable, default)
    if python is None:
        raise Skip(f"no interpreter at {default} (set {variable}); see this file's docstring")
    if name == "floor-std":
        return floor(root, data, python, "floor-std")
    if name == "mlflow":
        return mlflow(root, data, python)
    return mlserver(root, data, python, batching=name == "mlserver-batch")


def check(served: Served, x: np.ndarray, expected: np.ndarray) -> None:
    """The server's answers for 1 and 100 rows are the model's own predictions."""
    for rows in (1, 100):
        load = served.request(x[:rows])
        answer = httpx.post(load.url, content=load.body, headers=dict(load.headers), timeout=30)
        if answer.status_code != 200:
            raise Skip(f"answered {answer.status_code} to a good request: {answer.text[:300]}")
        got = served.answers(answer.json())
        if got != expected[:rows].tolist():
            raise Skip(f"wrong predictions for {rows} row(s): {got[:5]}...")


Results = dict[str, dict[str, loadgen.Result]]


def measure(
    served: Served, x: np.ndarray, expected: np.ndarray, args: argparse.Namespace
) -> dict[str, loadgen.Result]:
    out: dict[str, loadgen.Result] = {}
    loads: list[tuple[str, loadgen.Load, int]] = []
    if served.predicts:
        check(served, x, expected)
        loadgen.run(served.request(x[:1]), 8, 1, generator=args.loadgen)  # warm-up
        loads += [(label, served.request(x[:rows]), c) for label, rows, c in POINTS]
    for route, load in served.trivial.items():
        loads += [(f"{route} c={c}", load, c) for c in TRIVIAL_CONCURRENCY]
    idle = idle_cpu(served.pid) if served.pid else 0.0
    if idle > 0.005:
        print(f"  {served.name:<15} idle: {idle * 100:.1f} % of a CPU (taken off CPU/request)")
    for label, load, concurrency in loads:
        before = tree_cpu(served.pid) if served.pid else None
        result = loadgen.run(load, concurrency, args.duration, generator=args.loadgen)
        if before is not None and served.pid and result.requests:
            spent = tree_cpu(served.pid) - before - idle * result.seconds
            if spent > 0:  # else the idle figure was off (a worker starting): no figure
                result = dataclasses.replace(result, cpu_us=spent / result.requests * 1e6)
        out[label] = result
        print(f"  {served.name:<15} {label:<14} {fmt(result)}", flush=True)
    return out


def fmt(r: loadgen.Result) -> str:
    cpu = f"  server CPU {r.cpu_us:,.0f} us/req" if r.cpu_us is not None else ""
    latency = f"p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms"
    return f"{r.rps:>8,.0f} req/s  {latency}  err {r.errors}{cpu}"


# -- report ---------------------------------------------------------------------------------


def report(results: Results, args: argparse.Namespace) -> None:
    print()
    print(f"command: python benchmarks/serving.py {shlex.join(sys.argv[1:])}")
    generator = "wrk" if args.loadgen != "asyncio" and loadgen.wrk_path() else "asyncio"
    print(f"load generator: {generator}, {args.duration:g} s a point, keep-alive, 127.0.0.1")
    labels = [label for label, _, _ in POINTS]
    print(f"\n{'server':<16}" + "".join(f"{label:>34}" for label in labels))
    print(f"{'':<16}" + f"{'req/s  p50 ms  p99 ms  err':>34}" * len(labels))
    for name, by_label in results.items():
        if not any(label in by_label for label in labels):
            continue
        cells = []
        for label in labels:
            r = by_label.get(label)
            cells.append(
                f"{r.rps:>12,.0f}{r.p50_ms:>8.2f}{r.p99_ms:>9.2f}{r.errors:>5}" if r else "-" * 34
            )
        print(f"{name:<16}" + "".join(f"{c:>34}" for c in cells))
    print(f"\n{'server CPU us/req':<16}" + "".join(f"{label:>14}" for label in labels))
    for name, by_label in results.items():
        cpus = [by_label[label].cpu_us if label in by_label else None for label in labels]
        if any(c is not None for c in cpus):
            row = "".join(f"{c:>14,.0f}" if c is not None else f"{'-':>14}" for c in cpus)
            print(f"{name:<16}{row}")
    ratios(results, labels)
    overhead(results)


def ratios(results: Results, labels: list[str]) -> None:
    print("\nrequests/s ratios, same run:")
    served = [n for n, by in results.items() if any(label in by for label in labels)]
    pairs = [(n, "floor") for n in served if n != "floor" and "floor" in served]
    if "underlay" in served:
        pairs += [("underlay", p) for p in PEERS if p != "floor" and p in served]
    for name, peer in pairs:
        cells = []
        for label in labels:
            a, b = results[name].get(label), results[peer].get(label)
            ratio = a.rps / b.rps if a is not None and b is not None and b.rps > 0 else None
            cells.append(f"{ratio:>8.2f}x" if ratio is not None else f"{'-':>9}")
        print(f"  {name + ' / ' + peer:<34}" + "".join(f"{c:>14}" for c in cells))
    print(f"  {'':<34}" + "".join(f"{label:>14}" for label in labels))
    ours = results.get("underlay", {})
    if "1 row c=64" in ours and "1 row c=1" in ours and "1 row c=64" in results.get("floor", {}):
        share = ours["1 row c=64"].rps / results["floor"]["1 row c=64"].rps
        print(
            f"targets: c=64 {share:.2f} of the floor (>= 0.8), p99 "
            f"{ours['1 row c=64'].p99_ms:.1f} ms (<= 30); c=1 p50 "
            f"{ours['1 row c=1'].p50_ms:.2f} ms (<= 1)"
        )


def overhead(results: Results) -> None:
    base = results.get("floor", {})
    rows = [
        (name, label.rsplit(" c=", 1)[0])
        for name, by_label in results.items()
        for label in by_label
        if label.startswith("GET ") and label.endswith(" c=1")
    ]
    if not rows:
        return
    print("\nper-request overhead of trivial routes (no model work):")
    print(f"  {'server / route':<44}{'c=1 req/s':>11}{'p50 ms':>9}{'c=64 req/s':>12}{'p99 ms':>9}")
    for name, route in rows:
        one, many = results[name][f"{route} c=1"], results[name].get(f"{route} c=64")
        line = f"  {name + ' ' + route:<44}{one.rps:>11,.0f}{one.p50_ms:>9.2f}"
        if many:
            line += f"{many.rps:>12,.0f}{many.p99_ms:>9.2f}"
            floor64 = base.get("GET /health c=64")
            if floor64 and name != "floor":
                line += f"   {many.rps / floor64.rps:.2f}x of the floor's /health at c=64"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--duration", type=float, default=3.0, help="seconds a point")
    parser.add_argument("--quick", action="store_true", help="1 s a point")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "asyncio"), default="auto")
    parser.add_argument("--replicas", type=int, default=2, help="underlay replicas")
    parser.add_argument(
        "--underlay-workers", type=int, default=2, help="`underlay up --workers` (the floor runs 2)"
    )
    parser.add_argument("--deploy-args", default="", help="more `underlay deploy` options")
    parser.add_argument(
        "--log-sample-rate", type=float, default=0.1, help="underlay's prediction log sampling"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.quick:
        args.duration = 1.0
    results: Results = {}
    with tempfile.TemporaryDirectory(prefix="ul-serve-bench-") as tmp:
        root = Path(tmp)
        x, y, data = make_data(args.seed, root)
        model = fit(x, y, args.seed)
        expected = model.predict(x)
        for name in args.targets:
            try:
                with open_target(name, root, data, model, x, args) as served:
                    results[name] = measure(served, x, expected, args)
            except Skip as exc:
                print(f"{name}: skipped: {exc}", flush=True)
    report(results, args)
    if args.json:
        raw = {n: {k: vars(v) for k, v in r.items()} for n, r in results.items()}
        Path(args.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
