"""The simulate page's replay: a built-in trace, cut to a few hundred jobs, through each
chosen policy on a small cluster, with the measures ``underlay simulate`` prints and the
jobs ended over simulated time per policy.

It runs :class:`underlay.compute.simulator.Simulation`, the engine behind the CLI, so what the
page shows is what the live scheduler's ``decide`` does. A request stays fast because every
input is bounded: built-in traces only (never a path on the server), a cap on jobs times
policies, a cluster spec of at most :data:`MAX_NODES` nodes, and one replay at a time per
server process.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import threading
from dataclasses import dataclass
from typing import Any

from underlay.errors import InvalidInput, Unavailable

TRACES = ("philly", "philly-runtime", "openb")
DEFAULT_CLUSTER = {"philly": "4x8xP100", "philly-runtime": "4x8xP100", "openb": "openb-gpu"}
MAX_JOBS = 1000
MAX_WORK = 1000
"""Jobs times policies one request may replay (about a second per 500 on this machine)."""
DEFAULT_JOBS = 300
MAX_NODES = 256
CURVE_POINTS = 200
_GROUP = re.compile(r"(\d{1,3})x(\d{1,2})(?:x[A-Za-z0-9_.-]{1,20})?(?::(?:cpu|mem)=\d{1,6})*")
_busy = threading.Lock()


@dataclass
class Replay:
    trace: str
    cluster: str
    jobs: int
    reports: list[dict[str, Any]]
    curves: dict[str, list[tuple[float, float]]]
    """Policy -> (simulated hours since the first arrival, jobs ended by then)."""


def check_cluster(spec: str) -> str:
    """A compact cluster spec of at most :data:`MAX_NODES` nodes, or ``openb``/``openb-gpu``;
    anything else (a path on the server, a huge cluster) is an :class:`InvalidInput`."""
    spec = spec.strip()
    if spec in ("openb", "openb-gpu"):
        return spec
    groups = spec.split(",")
    if len(groups) > 8 or not all(_GROUP.fullmatch(g.strip()) for g in groups):
        raise InvalidInput(
            "cluster must be COUNTxGPUSxTYPE[:cpu=N][:mem=GIB], comma-separated "
            "(e.g. 4x8xP100), or openb / openb-gpu"
        )
    nodes = sum(int(g.strip().split("x")[0]) for g in groups)
    if not 1 <= nodes <= MAX_NODES:
        raise InvalidInput(f"cluster must have 1 to {MAX_NODES} nodes, not {nodes}")
    return spec


@functools.lru_cache(maxsize=4)
def _trace(name: str) -> Any:
    from underlay.compute.simulator import load_trace

    return load_trace(name)


def replay(trace: str, cluster: str | None, policies: list[str], jobs: int) -> Replay:
    """Replay the first ``jobs`` jobs of ``trace`` under each policy, one after another."""
    from underlay.compute.scheduler import POLICIES, policy_config
    from underlay.compute.simulator import Simulation, build_cluster, quotas_for

    if trace not in TRACES:
        raise InvalidInput(f"trace must be one of {', '.join(TRACES)}")
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise InvalidInput(f"policies must be some of {', '.join(POLICIES)}")
    if not 1 <= jobs <= MAX_JOBS:
        raise InvalidInput(f"jobs must be between 1 and {MAX_JOBS}")
    policies = list(dict.fromkeys(policies))
    if jobs * len(policies) > MAX_WORK:
        raise InvalidInput(
            f"jobs x policies must be at most {MAX_WORK} here (e.g. 500 jobs, 2 policies); "
            "replay more with underlay simulate"
        )
    spec = check_cluster(cluster or DEFAULT_CLUSTER[trace])
    if not _busy.acquire(blocking=False):
        raise Unavailable("a simulation is already running on this server; try again shortly")
    try:
        loaded = _trace(trace)
        cut = dataclasses.replace(loaded, jobs=loaded.jobs[:jobs])
        nodes = build_cluster(spec)
        reports, curves = [], {}
        for policy in policies:
            sim = Simulation(
                cut, nodes, quotas_for(cut, nodes), policy_config(policy), cluster_name=spec
            )
            curve = _follow(sim)
            reports.append(sim.run().as_dict())
            curves[policy] = _every_nth(curve, CURVE_POINTS)
        return Replay(trace, spec, len(cut.jobs), reports, curves)
    finally:
        _busy.release()


def _follow(sim: Any) -> list[tuple[float, float]]:
    """Points (simulated hours, jobs ended) appended as the replay ends each job."""
    curve: list[tuple[float, float]] = []

    def progress(ended: int, _total: int) -> None:
        curve.append(((sim.clock - sim.start) / 3600.0, float(ended)))

    sim.progress = progress
    return curve


def _every_nth(points: list[tuple[float, float]], most: int) -> list[tuple[float, float]]:
    if len(points) <= most:
        return points
    step = len(points) / most
    return [points[int(i * step)] for i in range(most)] + [points[-1]]
