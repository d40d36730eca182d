"""Ray Serve as a model host, against our replica, measured in the same run (docs/scaling.md,
"Serving on Ray").

One seeded scikit-learn LogisticRegression is hosted twice on this machine:

* ``replica``: our replica's HTTP/1.1 server (``underlay.serving.replica``'s app, its
  ``/predict`` route and secret), called over the data plane's keep-alive pool
  (``underlay.serving.pool``): the hop a prediction takes today;
* ``serve``: a Ray Serve deployment on a one-node Ray cluster bound to 127.0.0.1 with token
  authentication (``LocalRayCluster``, as the Ray executor starts it), Serve's HTTP proxy
  disabled, one replica pinned to our node's custom resource (``underlay_node:<name>``, 0 CPUs:
  placement ours), ``max_ongoing_requests`` 64, called through a ``DeploymentHandle`` from
  this process (the API server's place).

Both get the same frames (``underlay.serving.wire``: 1 row and 32 rows) and run the same
``predict_batch``. Prints p50 and p99 one call at a time, requests/s with 16 calls in flight,
and the ratios; then what Serve added that listens beyond 127.0.0.1, and what the Serve
replica's process can reach (Ray's token, which lets a client run anything on the cluster).

Needs Ray Serve's imports: ``ray[serve]``, or at least ``grpcio`` and ``grpcio-reflection``
beside ``ray`` (without them it prints what is missing and exits 0).

    python benchmarks/ray_serve_hop.py [--calls 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from underlay.compute.executors.ray_cluster import (
    HOST,
    LocalRayCluster,
    auth_environment,
    import_for_driver,
    node_resource,
)
from underlay.serving import wire
from underlay.serving.pool import ReplicaPool

CONCURRENCY = 16
SECRET = "s" * 40
X = np.random.RandomState(0).rand(60, 4)
FRAMES = {"1 row": wire.encode({"input": X[:1]}), "32 rows": wire.encode({"input": X[:32]})}

REPLICA = f"""
import asyncio
import numpy as np
from sklearn.linear_model import LogisticRegression
from underlay.serving.replica import ReplicaApp, _Connection, listen_socket
X = np.random.RandomState(0).rand(60, 4)
app = ReplicaApp(LogisticRegression().fit(X, (X[:, 0] + X[:, 1] > 1).astype(int)), {SECRET!r})
async def main():
    sock, port = listen_socket()
    connections = set()
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: _Connection(app, connections), sock=sock, backlog=1024)
    print(port, flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


class Host:
    """The Serve deployment: the same model and the same ``predict_batch`` as a replica."""

    def __init__(self) -> None:
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression().fit(X, (X[:, 0] + X[:, 1] > 1).astype(int))

    def __call__(self, frame: bytes) -> bytes:
        from underlay.serving.replica import predict_batch

        return wire.encode(predict_batch(self.model, wire.decode(frame)))

    def reach(self) -> dict[str, Any]:
        """What this process (where user model code would run) can reach."""
        token = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
        return {
            "ray_token_path_in_environment": bool(token),
            "ray_token_readable": bool(token) and os.access(token, os.R_OK),
        }


Call = Callable[[bytes], Awaitable[bytes]]


async def measure(call: Call, frame: bytes, calls: int) -> dict[str, float]:
    for _ in range(20):
        await call(frame)
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        await call(frame)
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    each = max(1, calls // CONCURRENCY)

    async def client() -> None:
        for _ in range(each):
            await call(frame)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return {
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
        "rps": each * CONCURRENCY / (time.perf_counter() - started),
    }


def listeners(pids: set[int]) -> set[tuple[str, str]]:
    found = set()
    for pid in pids:
        try:
            process = psutil.Process(pid)
            title = " ".join(process.cmdline())[:48].strip()
            for c in process.net_connections(kind="inet"):
                if c.laddr and not c.raddr and c.status == psutil.CONN_LISTEN:
                    found.add((title, c.laddr.ip))
        except psutil.Error:
            continue
    return found


def run(calls: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    temp = Path(tempfile.mkdtemp(prefix="ulb-", dir="/tmp"))  # short: Ray socket paths
    cluster = LocalRayCluster(temp)
    replica = subprocess.Popen([sys.executable, "-c", REPLICA], stdout=subprocess.PIPE)
    try:
        address = cluster.start_head("bench", num_cpus=2)
        os.environ.update(auth_environment(cluster.token_path))
        ray = import_for_driver(address)
        from ray._raylet import Config

        Config.initialize("")  # take the token settings: ray was imported before them
        ray.init(address=address, namespace="underlay", log_to_driver=False)
        before = listeners(cluster.pids())
        from ray import serve

        started = time.perf_counter()
        serve.start(proxy_location="Disabled")
        deployment = serve.deployment(
            num_replicas=1,
            max_ongoing_requests=64,
            ray_actor_options={"num_cpus": 0, "resources": {node_resource("bench"): 0.001}},
        )(Host)
        handle = serve.run(deployment.bind(), name="churn", route_prefix=None)
        results["serve start and deploy (s)"] = round(time.perf_counter() - started, 2)
        added = listeners(cluster.pids()) - before
        results["Serve's new listeners beyond 127.0.0.1"] = sorted(
            f"{title} on {ip}" for title, ip in added if ip not in (HOST, "::ffff:127.0.0.1")
        )
        results["the Serve replica's process"] = handle.reach.remote().result()
        assert replica.stdout is not None
        port = int(replica.stdout.readline())
        results |= asyncio.run(_compare(handle, port, calls))
        serve.shutdown()
        ray.shutdown()
    finally:
        replica.kill()
        replica.wait()
        cluster.stop()
        shutil.rmtree(temp, ignore_errors=True)
    return results


async def _compare(handle: Any, port: int, calls: int) -> dict[str, Any]:
    pool = ReplicaPool()

    async def ours(frame: bytes) -> bytes:
        status, body = await pool.post(HOST, port, "/predict", frame, {"x-replica-secret": SECRET})
        assert status == 200, body
        return body

    async def served(frame: bytes) -> bytes:
        return bytes(await handle.remote(frame))

    out: dict[str, Any] = {}
    for label, frame in FRAMES.items():
        mine, theirs = wire.decode(await ours(frame)), wire.decode(await served(frame))
        assert all(np.array_equal(mine[k], theirs[k]) for k in mine), "different answers"
        a, b = await measure(ours, frame, calls), await measure(served, frame, calls)
        out[label] = {
            "replica": {k: round(v, 2) for k, v in a.items()},
            "serve": {k: round(v, 2) for k, v in b.items()},
            "serve/replica p50": round(b["p50_ms"] / a["p50_ms"], 1),
            "serve/replica requests/s": round(b["rps"] / a["rps"], 3),
        }
    await pool.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    try:
        import ray.serve  # noqa: F401
    except ImportError as exc:
        print(f"skipped: Ray Serve does not import here ({exc}); pip install 'ray[serve]'")
        return
    print(json.dumps(run(args.calls), indent=1))


if __name__ == "__main__":
    main()
