"""The servers ``benchmarks/serving.py`` compares: the bare FastAPI floor, ``mlflow models
serve`` and Seldon MLServer (each in its own virtual environment), started on 127.0.0.1 with
the same seeded model and stopped afterwards.

Each server is a :class:`Served`: how to build a request of ``rows`` rows in its own protocol,
and how to read the predictions back from its answer (checked against the expected ones
before any load is sent).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from loadgen import Load

HERE = Path(__file__).resolve().parent


class Skip(Exception):
    """A target that cannot run here; the reason is printed and the run goes on."""


@dataclass
class Served:
    name: str
    request: Callable[[np.ndarray], Load]
    """The request carrying these rows."""
    answers: Callable[[Any], list[int]]
    """The predictions in a decoded JSON answer."""
    trivial: dict[str, Load] = field(default_factory=dict)
    """Routes that do no model work, for the per-request overhead table."""
    pid: int | None = None
    predicts: bool = True
    """False when the server runs but cannot serve the model (only its trivial routes)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def records_body(x: np.ndarray) -> bytes:
    names = [f"f{i}" for i in range(x.shape[1])]
    rows = [dict(zip(names, row, strict=True)) for row in x.tolist()]
    return json.dumps({"records": rows}).encode()


JSON = (("Content-Type", "application/json"),)


@contextmanager
def process(
    cmd: list[str],
    log: Path,
    ready: str,
    *,
    env: dict[str, str] | None = None,
    wait_s: float = 180,
    sweep: str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` in its own process group until GET ``ready`` answers 200; stop it after,
    and with it every process whose command line holds ``sweep`` (and their children): the
    processes it started in sessions of their own (underlay's replicas)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    if httpx.get(ready, timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise Skip(f"{cmd[0]} did not start ({ready}); the end of its log:\n{tail}")
                time.sleep(0.2)
            yield proc
        finally:
            stop(proc)
            if sweep:
                stop_strays(sweep)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group this benchmark started, SIGKILL it if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def stop_strays(marker: str) -> None:
    """SIGTERM the processes whose command line holds ``marker`` and their descendants (this
    benchmark's temporary folder: only what it started), SIGKILL those left after 10 s."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in proc.info["cmdline"] or ()):
            with contextlib.suppress(psutil.NoSuchProcess):
                for one in [proc, *proc.children(recursive=True)]:
                    found[one.pid] = one
    for one in found.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            one.terminate()
    _, alive = psutil.wait_procs(list(found.values()), timeout=10)
    for one in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            one.kill()


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its live descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def idle_cpu(pid: int, seconds: float = 2.0) -> float:
    """The share of a CPU the server's process tree uses with no requests (background loops:
    underlay's scheduler, node agent and replica health checks), measured over ``seconds``."""
    before, started = tree_cpu(pid), time.perf_counter()
    time.sleep(seconds)
    return (tree_cpu(pid) - before) / (time.perf_counter() - started)


def peer_python(variable: str, default: str) -> str | None:
    python = os.environ.get(variable, default)
    return python if Path(python).exists() else None


FIT = """
import sys, numpy as np
from sklearn.linear_model import LogisticRegression
d = np.load(sys.argv[1])
model = LogisticRegression(random_state=int(d["seed"]), max_iter=1000).fit(d["X"], d["y"])
"""


def _fit_and_save(python: str, data: Path, out: Path, save: str) -> None:
    script = FIT + textwrap.dedent(save)
    done = subprocess.run(
        [python, "-c", script, str(data), str(out)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise Skip(f"fitting the model with {python} failed:\n{done.stderr[-3000:]}")


# -- the floor ------------------------------------------------------------------------------


@contextmanager
def floor(
    root: Path, data: Path | None, python: str = sys.executable, name: str = "floor"
) -> Iterator[Served]:
    """The bare FastAPI app of ``serving_floor.py`` under uvicorn with 2 workers."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [python, "-m", "uvicorn", "serving_floor:app", "--app-dir", str(HERE)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    cmd += ["--no-access-log", "--log-level", "warning"]
    env = {"UNDERLAY_BENCH_FLOOR_DATA": str(data)} if data else {}
    with process(cmd, root / f"{name}.log", f"{base}/health", env=env) as proc:
        yield Served(
            name,
            lambda x: Load(f"{base}/predict", "POST", records_body(x), JSON),
            lambda answer: list(answer["predictions"]),
            {"GET /health": Load(f"{base}/health")},
            proc.pid,
        )


# -- mlflow models serve --------------------------------------------------------------------

MLFLOW_SAVE = """
import mlflow.sklearn
mlflow.sklearn.save_model(model, sys.argv[2])
"""


@contextmanager
def mlflow(root: Path, data: Path, python: str) -> Iterator[Served]:
    """``mlflow models serve`` of the model saved with ``mlflow.sklearn``, 2 workers."""
    model = root / "mlflow-model"
    _fit_and_save(python, data, model, MLFLOW_SAVE)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [str(Path(python).parent / "mlflow"), "models", "serve", "-m", str(model)]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "2"]
    path = {"PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with process(cmd, root / "mlflow.log", f"{base}/ping", env=path) as proc:  # runs `uvicorn`
        yield Served(
            "mlflow",
            lambda x: Load(f"{base}/invocations", "POST", _mlflow_body(x), JSON),
            lambda answer: list(answer["predictions"]),
            pid=proc.pid,
        )


def _mlflow_body(x: np.ndarray) -> bytes:
    names = [f"f{i}" for i in range(x.shape[1])]
    rows = [dict(zip(names, row, strict=True)) for row in x.tolist()]
    return json.dumps({"dataframe_records": rows}).encode()


# -- Seldon MLServer ------------------------------------------------------------------------

MLSERVER_SAVE = """
import joblib, pathlib
pathlib.Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
joblib.dump(model, pathlib.Path(sys.argv[2]) / "model.joblib")
"""


@contextmanager
def mlserver(root: Path, data: Path, python: str, *, batching: bool) -> Iterator[Served]:
    """``mlserver start`` with mlserver-sklearn; adaptive batching of up to 32 requests within
    5 ms, or none. MLServer's other settings keep their defaults (one inference worker)."""
    name = "mlserver-batch" if batching else "mlserver"
    folder = root / name
    _fit_and_save(python, data, folder, MLSERVER_SAVE)
    port = free_port()
    settings = {
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "host": "127.0.0.1",
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model: dict[str, Any] = {
        "name": "lr",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"},
    }
    if batching:
        model |= {"max_batch_size": 32, "max_batch_time": 0.005}
    (folder / "model-settings.json").write_text(json.dumps(model))
    base = f"http://127.0.0.1:{port}"
    cmd = [str(Path(python).parent / "mlserver"), "start", str(folder)]
    with process(cmd, root / f"{name}.log", f"{base}/v2/models/lr/ready") as proc:
        yield Served(
            name,
            lambda x: Load(f"{base}/v2/models/lr/infer", "POST", _v2_body(x), JSON),
            lambda answer: [int(v) for v in answer["outputs"][0]["data"]],
            {"GET /v2/health/live": Load(f"{base}/v2/health/live")},
            proc.pid,
        )


def _v2_body(x: np.ndarray) -> bytes:
    tensor = {"name": "input-0", "shape": list(x.shape), "datatype": "FP64"}
    tensor["data"] = x.ravel().tolist()
    return json.dumps({"inputs": [tensor]}).encode()
