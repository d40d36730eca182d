"""Autoscaling benchmark: cost against job completion time on the Philly arrivals.

Replays the first ``--jobs`` jobs of ``philly-runtime`` (durations from the runtime file)
under the ``default`` policy on node groups of 8 x P100 nodes, and prints cost and JCT beside
the baseline measured in the same run: a fixed group of 9 nodes (min = max = 9, the cluster
``philly-runtime`` is documented on). Everything runs in simulated time, seeded, so the
figures are the same on any machine under any load; only ``wall_s`` depends on the machine.

    .venv/bin/python benchmarks/autoscaling.py [--jobs 5000] [--json]

Prices are illustrative: 8 per on-demand node-hour, 2.4 per spot node-hour (30 %); nodes
take 120 s to boot and go after 600 s idle.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from underlay.compute.simulator import load_trace, simulate
from underlay.compute.simulator.autoscaling import AutoscaleSpec, parse_groups

RUNS = (
    ("fixed 9 nodes (baseline)", "9-9x8xP100:price=8", 0.0),
    ("autoscaled 0-9", "0-9x8xP100:price=8", 0.0),
    ("autoscaled 0-12", "0-12x8xP100:price=8", 0.0),
    ("spot 0-12 + on-demand 0-3", "0-12x8xP100:spot:price=2.4,0-3x8xP100:price=8", 0.0),
    ("the same, 0.02 losses/spot node-hour", "0-12x8xP100:spot:price=2.4,0-3x8xP100:price=8", 0.02),
)


def write_slice(jobs: int, path: Path) -> None:
    """The first ``jobs`` jobs of philly-runtime, in our CSV trace format."""
    trace = load_trace("philly-runtime")
    rows = ["id,project,submit_s,duration_s,gpus,gpu_milli,gang,cpu_milli,memory_mib"]
    for job in trace.jobs[:jobs]:
        w, r = job.workload, job.workload.request
        rows.append(
            f"{w.id},{w.project},{w.submit_time},{job.duration_s},{r.gpus or ''},"
            f"{r.gpu_milli or ''},{w.gang},{r.cpu_milli},{r.memory_mib}"
        )
    path.write_text("\n".join(rows) + "\n")


def run(path: Path, groups: str, loss: float) -> dict[str, Any]:
    spec = AutoscaleSpec(parse_groups(groups), boot_s=120.0, idle_s=600.0, spot_loss_per_hour=loss)
    started = time.perf_counter()
    report = simulate(str(path), "none", "default", autoscale=spec, seed=0).as_dict()
    scaled = report["autoscale"]
    return {
        "finished": report["finished"],
        "avg_jct_h": report["avg_jct_s"] / 3600,
        "p95_jct_h": report["p95_jct_s"] / 3600,
        "cost": scaled["cost"],
        "node_hours": scaled["node_hours"],
        "provisioned_utilization": scaled["provisioned_utilization"],
        "spot_losses": scaled["spot_losses"],
        "wall_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="Jobs of the trace to replay.")
    parser.add_argument("--json", action="store_true", help="One JSON object per run.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "philly-slice.csv"
        write_slice(args.jobs, path)
        results = [(name, groups, run(path, groups, loss)) for name, groups, loss in RUNS]
    base = results[0][2]
    if args.json:
        for name, groups, r in results:
            print(json.dumps({"run": name, "groups": groups, **r}))
        return
    print(f"{'run':40} {'avg JCT h':>9} {'p95 h':>7} {'cost':>9} {'cost/base':>9} "
          f"{'JCT/base':>8} {'util':>5} {'lost':>5}")  # fmt: skip
    for name, _, r in results:
        print(
            f"{name:40} {r['avg_jct_h']:9.2f} {r['p95_jct_h']:7.1f} {r['cost']:9,.0f} "
            f"{r['cost'] / base['cost']:9.2f} {r['avg_jct_h'] / base['avg_jct_h']:8.2f} "
            f"{r['provisioned_utilization']:5.2f} {r['spot_losses']:5}"
        )


if __name__ == "__main__":
    main()
