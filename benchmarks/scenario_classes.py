"""Where a scenario's average JCT goes: per class of job, ``default`` against another policy.

Replays one scenario of :mod:`underlay.compute.simulator.scenarios` under each policy named
and prints, per class of job (notebooks by share, training by GPUs x gang, each split into
runs shorter and longer than one hour), the average JCT, the average queueing delay before
the first start, and how often such jobs were preempted. Simulated time, so the figures are
the same on any machine.

    .venv/bin/python benchmarks/scenario_classes.py notebooks [--policies default,las] [--scale 1]
"""

from __future__ import annotations

import argparse
import statistics

from underlay.compute.scheduler import policy_config
from underlay.compute.simulator.cluster import parse_spec, quotas_from_weights
from underlay.compute.simulator.engine import Simulation
from underlay.compute.simulator.scenarios import SCENARIOS, Scenario
from underlay.compute.simulator.trace import TraceJob

Row = tuple[float, float, int]
"""JCT, queueing delay (seconds) and preemptions of one job."""


class _Finishes(Simulation):
    """A replay that remembers when each job finished."""

    finished_at: dict[str, float]

    def _finish(self, wid: str) -> None:
        self.finished_at[wid] = self.clock
        super()._finish(wid)


def _class(job: TraceJob) -> str:
    r = job.workload.request
    kind = f"nb{r.gpu_milli}" if not r.gpus else f"g{r.gpus}x{job.workload.gang}"
    return f"{kind}-{'short' if (job.duration_s or 0) < 3600 else 'long'}"


def per_class(scenario: Scenario, policy: str) -> dict[str, list[Row]]:
    nodes = parse_spec(scenario.cluster)
    weights = scenario.weights
    quotas = quotas_from_weights(nodes, weights) if len(weights) > 1 else ()
    sim = _Finishes(scenario.trace, nodes, quotas, policy_config(policy))
    sim.finished_at = {}
    sim.run()
    preempted: dict[str, int] = {}
    for _, victim, _ in sim.preempt_log:
        preempted[victim] = preempted.get(victim, 0) + 1
    out: dict[str, list[Row]] = {}
    for job in scenario.trace.jobs:
        w = job.workload
        row = (
            sim.finished_at[w.id] - w.submit_time,
            sim.first_start[w.id] - w.submit_time,
            preempted.get(w.id, 0),
        )
        out.setdefault(_class(job), []).append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--policies", default="default,las")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    scenario = SCENARIOS[args.scenario](args.seed, args.scale)
    policies = args.policies.split(",")
    found = {p: per_class(scenario, p) for p in policies}
    header = "".join(f" | {p[:13]:<13} JCT h  queue h  preempt" for p in policies)
    print(f"{'class':<14}{'jobs':>6}{header}")
    for name in sorted(found[policies[0]]):
        line = f"{name:<14}{len(found[policies[0]][name]):>6}"
        for p in policies:
            rows = found[p][name]
            jct = statistics.mean(r[0] for r in rows) / 3600
            queue = statistics.mean(r[1] for r in rows) / 3600
            line += f" | {'':<13}{jct:>6.2f}{queue:>9.2f}{sum(r[2] for r in rows):>9}"
        print(line)


if __name__ == "__main__":
    main()
