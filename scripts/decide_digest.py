"""Digests of what ``decide`` answers, to show that a speed change changed no decision.

Run it before and after a change to the policy and compare the two outputs (``diff``): each
line is one case and the SHA-256 of the JSON of every ``Decisions`` it produced
(:func:`underlay.compute.scheduler.codec.to_json`), so one different byte anywhere shows.

- ``bench``: the seeded snapshots of ``benchmarks/scheduler.py`` (several sizes, loads and
  seeds), one round under every named policy;
- ``scenario``: every round of every scenario of ``benchmarks/scenarios.py`` (at
  ``--scale``, 0.3 by default) under every named policy, as the simulator replays it;
- ``trace`` (with ``--traces``): every round of the first 2,500 openb pods on the openb nodes
  and of the first 1,500 Philly jobs on ``32x8xP100``, under ``default`` and ``las``.

    PYTHONPATH=src .venv/bin/python scripts/decide_digest.py [--scale 0.3] [--traces] > before.txt
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType

from underlay.compute.scheduler import POLICIES, Decisions, Snapshot, decide
from underlay.compute.scheduler.codec import to_json
from underlay.compute.simulator.engine import Simulation
from underlay.compute.simulator.replay import build_cluster, load_trace, quotas_for
from underlay.compute.simulator.scenarios import SCENARIOS, Scenario
from underlay.compute.simulator.trace import Trace

ROOT = Path(__file__).resolve().parent.parent

BENCH_CASES = (
    # nodes, pending, projects, busy, seed
    (1000, 10_000, 20, 0.9, 0),
    (1000, 10_000, 20, 0.3, 0),
    (300, 3000, 20, 0.95, 1),
    (100, 2000, 5, 0.6, 2),
    (50, 500, 3, 0.0, 3),
)


def _bench_module() -> ModuleType:
    path = ROOT / "benchmarks" / "scheduler.py"
    spec = importlib.util.spec_from_file_location("bench_scheduler", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Digesting(Simulation):
    """A replay that hashes every round's decisions as it goes."""

    digest: Callable[[Decisions], None]

    def _decide(self) -> Decisions:
        decisions = super()._decide()
        self.digest(decisions)
        return decisions


def _replay(trace: Trace, cluster: str, policy: str, weights_from: Scenario | None) -> str:
    from underlay.compute.simulator.cluster import quotas_from_weights

    nodes = build_cluster(cluster)
    if weights_from is not None:
        w = weights_from.weights
        quotas = quotas_from_weights(nodes, w) if len(w) > 1 else ()
    else:
        quotas = quotas_for(trace, nodes)
    h = hashlib.sha256()
    rounds = 0

    def digest(d: Decisions) -> None:
        nonlocal rounds
        rounds += 1
        h.update(to_json(d).encode())

    sim = _Digesting(trace, nodes, quotas, POLICIES[policy], cluster_name=cluster)
    sim.digest = digest
    sim.run()
    return f"{rounds} rounds {h.hexdigest()}"


def _one(snap: Snapshot) -> str:
    return hashlib.sha256(to_json(decide(snap)).encode()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.3)
    parser.add_argument("--traces", action="store_true")
    parser.add_argument("--only", choices=("bench", "scenario", "trace"), default=None)
    args = parser.parse_args()
    if args.only in (None, "bench"):
        bench = _bench_module()
        for nodes, pending, projects, busy, seed in BENCH_CASES:
            snap = bench.build(nodes, pending, projects, busy, seed)
            for name, config in POLICIES.items():
                digest = _one(replace(snap, config=config))
                print(f"bench {nodes}x{pending}x{projects} busy={busy} seed={seed} {name} {digest}")
                sys.stdout.flush()
    if args.only in (None, "scenario"):
        for sname, make in SCENARIOS.items():
            scenario = make(0, args.scale)
            for name in POLICIES:
                out = _replay(scenario.trace, scenario.cluster, name, scenario)
                print(f"scenario {sname} scale={args.scale} {name} {out}", flush=True)
    if args.traces and args.only in (None, "trace"):
        openb = load_trace("openb")
        philly = load_trace("philly")
        for trace, cluster, n in ((openb, "openb", 2500), (philly, "32x8xP100", 1500)):
            cut = replace(trace, jobs=trace.jobs[:n])
            for name in ("default", "las"):
                out = _replay(cut, cluster, name, None)
                print(f"trace {trace.name}[:{n}] {cluster} {name} {out}", flush=True)


if __name__ == "__main__":
    main()
