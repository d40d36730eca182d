"""Scenario suite: ``default`` against every simple baseline on generated, seeded traces.

Each scenario of :mod:`underlay.compute.simulator.scenarios` (equal-size bursts, wide gangs,
heavy-tailed run times at 70/85/95 % load, skewed quotas, notebooks mixed with training) is
replayed by the simulator under ``default`` and each baseline (``fifo``, ``fifo-backfill``,
``first-fit``, ``las``). Time is simulated, so the figures are the same on any machine and
under any load. For each scenario it prints average and p95 JCT, preemptions and makespan per
policy, then the ratio of ``default``'s average JCT to the best baseline's (target: at most
1.05 everywhere).

    .venv/bin/python benchmarks/scenarios.py [--seed 0] [--scale 1.0] [--only NAME ...] [--json]
"""

from __future__ import annotations

import argparse
import json

from underlay.compute.simulator.scenarios import BASELINES, SCENARIOS, replay


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every job count")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=None)
    parser.add_argument("--json", action="store_true", help="one JSON object per scenario")
    args = parser.parse_args()

    ratios: dict[str, float] = {}
    for name in args.only or SCENARIOS:
        scenario = SCENARIOS[name](args.seed, args.scale)
        reports = {p: replay(scenario, p) for p in ("default", *BASELINES)}
        best = min(BASELINES, key=lambda p: reports[p].avg_jct_s or float("inf"))
        ratio = (reports["default"].avg_jct_s or 0.0) / (reports[best].avg_jct_s or 1.0)
        ratios[name] = ratio
        load = scenario.offered_load
        if args.json:
            out = {
                "scenario": name,
                "jobs": len(scenario.trace.jobs),
                "cluster": scenario.cluster,
                "offered_load": load,
                "best_baseline": best,
                "ratio": ratio,
                "policies": {
                    p: {
                        k: getattr(r, k)
                        for k in ("avg_jct_s", "p95_jct_s", "preemptions", "makespan_s")
                    }
                    for p, r in reports.items()
                },
            }
            print(json.dumps(out), flush=True)
            continue
        offered = "burst" if load is None else f"offered load {load:.0%}"
        print(f"\n{name}: {scenario.description} on {scenario.cluster} ({offered})")
        print(f"  {'policy':<14}{'avg JCT h':>10}{'p95 JCT h':>10}{'preempt':>9}{'makespan h':>11}")
        for p, r in reports.items():
            print(
                f"  {p:<14}{_hours(r.avg_jct_s):>10}{_hours(r.p95_jct_s):>10}"
                f"{r.preemptions:>9,}{_hours(r.makespan_s):>11}"
            )
        print(f"  default / best baseline ({best}): {ratio:.3f}", flush=True)
    if not args.json:
        worst = max(ratios, key=ratios.__getitem__)
        print(f"\nworst ratio: {ratios[worst]:.3f} ({worst}); target: <= 1.05 in every scenario")


if __name__ == "__main__":
    main()
