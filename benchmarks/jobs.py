"""Job submission benchmark: submit-to-running latency on an idle cluster, and submit
throughput through the REST API.

Runs a real `underlay up` (SQLite, a local node agent with two simulated A100s) and a client
in this process, and measures against baselines taken in the same run:

* latency: server-side `started_at - submitted_at` of trivial jobs submitted one at a time,
  beside the cost of a bare `subprocess.Popen(["true"]).wait()` (the floor of any local
  executor) and the scheduling tick;
* throughput: N submissions (node cordoned, so nothing runs and only admission is measured),
  beside N `GET /readyz` requests over the same connection (the cost of any request).

    .venv/bin/python benchmarks/jobs.py [--jobs 1000] [--latency-runs 20]
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from underlay.client import Client


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--tick", type=float, default=0.2, help="scheduler loop interval (s)")
    args = parser.parse_args()
    home, port, token = tempfile.mkdtemp(), _port(), "ul_" + secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "UNDERLAY_HOME": home,
        "UNDERLAY_ADMIN_TOKEN": token,
        "UNDERLAY_COMPUTE__SIMULATED_ACCELERATORS": '[{"type": "A100", "count": 2}]',
        "UNDERLAY_COMPUTE__NODE_NAME": "bench",
        "UNDERLAY_COMPUTE__LOOP_INTERVAL_S": str(args.tick),
        "UNDERLAY_COMPUTE__HEARTBEAT_INTERVAL_S": str(args.tick),
    }
    cmd = [sys.executable, "-m", "underlay.cli.main", "up", "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        with Client(url, token) as c:
            while not c.ready():
                time.sleep(0.05)
            while not c.list_nodes():
                time.sleep(0.05)
            c.create_project("bench")
            latency(c, args.latency_runs, args.tick)
            throughput(c, args.jobs)
    finally:
        server.terminate()
        server.wait(30)


def latency(c: Client, runs: int, tick: float) -> None:
    waits = []
    for _ in range(runs):
        job = c.submit_job("bench", ["true"], cpus=0.1, memory_mib=64)
        done = c.wait_job("bench", job.id, timeout_s=60, poll_s=0.05)
        assert done.state == "succeeded", done.reason
        assert done.started_at is not None
        waits.append((done.started_at - done.submitted_at).total_seconds())
    floor = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.Popen(["true"]).wait()
        floor.append(time.perf_counter() - t)
    med, p95 = statistics.median(waits), sorted(waits)[int(0.95 * (len(waits) - 1))]
    base = statistics.median(floor)
    print(
        f"submit-to-running, idle cluster: median {med * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms "
        f"over {runs} jobs (scheduler tick {tick * 1000:.0f} ms)"
    )
    print(
        f"  baseline: fork+exec+wait of `true` {base * 1000:.1f} ms; ratio {med / base:.0f}x "
        "(the rest is heartbeat/tick pick-up, the shim, and two HTTP round trips)"
    )


def throughput(c: Client, n: int) -> None:
    c.cordon("bench", "benchmark: admission only")
    t = time.perf_counter()
    for _ in range(n):
        c.ready()
    base = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n):
        c.submit_job("bench", ["true"], name=f"j{i}", cpus=0.1, memory_mib=64)
    rate = n / (time.perf_counter() - t)
    print(
        f"submit throughput: {rate:.0f} jobs/s over {n} jobs through the API (one client, "
        f"SQLite; the node cordoned so only admission is measured)"
    )
    print(f"  baseline: GET /readyz {base:.0f} requests/s; ratio {rate / base:.2f}")
    for job in c.list_jobs("bench", state=["queued"], limit=1000):
        c.cancel_job("bench", job.id)


if __name__ == "__main__":
    main()
