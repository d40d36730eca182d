"""The live scheduling loop at scale: submit throughput and round times with thousands of
queued jobs and a thousand nodes, through a real ``underlay up``.

A thousand simulated nodes (8 simulated A100s each, inventories made by the agent's own probe)
register through the agents' heartbeat route and then stay silent (``node_lost_after_s`` is
set past the run), so the server holds them as nodes and nothing launches. Then one client
submits ``--jobs`` one-GPU jobs, as fast as one keep-alive connection allows, while the loop
places them; the slices of the submission show how the rate holds as the queue and the
running set grow. Baseline, in the same run and on the same connection: ``GET /readyz``,
the cost of any request. Round times come from the server's ``/metrics``
(``underlay_scheduler_round_duration_seconds``: count and sum, plus the last round).

    python benchmarks/live_loop.py [--nodes 1000] [--jobs 10000] [--pg URL]

Issue 15's target: submit throughput >= 0.5 of ``/readyz``'s requests/s.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from underlay.client import Client
from underlay.compute.inventory import SimulatedProbe, probe_node
from underlay.config import Settings


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _inventories(n: int, home: Path) -> list[dict[str, object]]:
    """``n`` node inventories as the agent sends them, each with 8 simulated A100s."""
    settings = Settings(
        home=home, compute={"simulated_accelerators": [{"type": "A100", "count": 8}]}
    )
    base = probe_node(settings, "template")
    out = []
    for i in range(n):
        name = f"sim-{i:04d}"
        probe = SimulatedProbe(settings.compute.simulated_accelerators, name)
        inventory = base.to_dict()
        inventory["name"] = name
        inventory["accelerators"] = [a.to_dict() for a in probe.probe()]
        out.append(inventory)
    return out


def _round_figures(url: str, token: str) -> tuple[int, float]:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}).text
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("underlay_scheduler_round_duration_seconds_count"):
            count = float(line.split()[-1])
        elif line.startswith("underlay_scheduler_round_duration_seconds_sum"):
            total = float(line.split()[-1])
    return int(count), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--slices", type=int, default=5)
    parser.add_argument("--pg", default="", help="a PostgreSQL URL (default: SQLite)")
    args = parser.parse_args()
    home, port, token = Path(tempfile.mkdtemp()), _port(), "ul_" + secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "UNDERLAY_HOME": str(home),
        "UNDERLAY_ADMIN_TOKEN": token,
        "UNDERLAY_COMPUTE__LOCAL_AGENT": "false",
        "UNDERLAY_COMPUTE__NODE_LOST_AFTER_S": "86400",
        "UNDERLAY_COMPUTE__LOOP_INTERVAL_S": "1.0",
    }
    if args.pg:
        env["UNDERLAY_STORE__URL"] = args.pg
    cmd = [sys.executable, "-m", "underlay.cli.main", "up", "--port", str(port)]
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with Client(url, token) as c:
            while not c.ready():
                if server.poll() is not None:
                    log.flush()
                    tail = (home / "server.log").read_text(errors="replace")[-2000:]
                    raise SystemExit(f"the server exited ({server.returncode}):\n{tail}")
                time.sleep(0.05)
            inventories = _inventories(args.nodes, home / "sim")
            t = time.perf_counter()
            auth = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=f"{url}/api/v1", headers=auth) as raw:
                for inv in inventories:
                    raw.put(f"/nodes/{inv['name']}", json=inv).raise_for_status()
            print(
                f"{args.nodes} nodes x 8 simulated A100 registered in "
                f"{time.perf_counter() - t:.1f} s; {args.jobs} one-GPU jobs "
                f"({'PostgreSQL' if args.pg else 'SQLite'})"
            )
            c.create_project("bench")
            n = min(2000, args.jobs)
            t = time.perf_counter()
            for _ in range(n):
                c.ready()
            base = n / (time.perf_counter() - t)
            rounds_before = _round_figures(url, token)
            size = args.jobs // args.slices
            rates = []
            t0 = time.perf_counter()
            for s in range(args.slices):
                t = time.perf_counter()
                for i in range(size):
                    c.submit_job("bench", ["true"], name=f"j{s}-{i}", gpus=1, memory_mib=64)
                rates.append(size / (time.perf_counter() - t))
            rate = size * args.slices / (time.perf_counter() - t0)
            count, total = _round_figures(url, token)
            rounds = count - rounds_before[0]
            avg = (total - rounds_before[1]) / rounds if rounds else float("nan")
            placed = len(c.list_jobs("bench", state=["admitted", "running"], limit=1000))
        slices = ", ".join(f"{r:.0f}" for r in rates)
        print(f"submit throughput: {rate:.0f} jobs/s (slices of {size}: {slices})")
        print(f"  baseline: GET /readyz {base:.0f} requests/s; ratio {rate / base:.2f}")
        print(f"rounds during the submission: {rounds}, average {avg * 1000:.0f} ms")
        print(f"placed when the submission ended: at least {placed} (list capped at 1,000)")
        print("target (issue 15): ratio >= 0.5")
    finally:
        server.terminate()
        server.wait(60)
        log.close()


if __name__ == "__main__":
    main()
