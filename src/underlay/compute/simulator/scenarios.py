"""Generated, seeded scenarios that test a policy against simple baselines.

Each scenario is a :class:`Scenario`: a trace made with ``random.Random(seed)``, a cluster
spec, and the quota weights of its projects. They are replayed by the simulator in simulated
time, so every figure is deterministic and independent of the machine's load.
``benchmarks/scenarios.py`` prints them; a test replays scaled-down copies.

Offered load is the accelerator-time the trace asks for over the capacity times the span of
its arrivals. Where a scenario names a load, arrival times are a Poisson process rescaled so
that its last arrival lands where the trace offers exactly that load.

- ``burst-1gpu``: 200 one-GPU jobs of 2 h at once on 32 GPUs (equal sizes);
- ``burst-gangs``: 40 gangs of 2 x 8 GPUs for 4 h at once on 32 GPUs;
- ``two-projects-wide``: two projects, only 16- and 32-GPU gangs, 90 % load on 64 GPUs;
- ``heavy-70`` / ``heavy-85`` / ``heavy-95``: four projects, 1 to 16 GPUs, log-normal run
  times (median 10 min, mean about 74 min, a few of several days) at that load on 64 GPUs;
- ``wide-gangs``: only gangs of 2, 4 and 8 nodes of 8 GPUs, 85 % load on 128 GPUs;
- ``skewed-quotas``: twelve projects whose guarantees follow 1/k and whose demand does not,
  heavy-tailed run times, 85 % load on 64 GPUs;
- ``notebooks``: notebooks of a quarter or half of one GPU (hours long) mixed with 1- to
  8-GPU training, three projects, 80 % load on 32 GPUs.

``scale`` multiplies the number of jobs (clusters and loads stay), for quick runs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from underlay.compute.scheduler.policies import policy_config
from underlay.compute.scheduler.snapshot import WHOLE, Request, Workload
from underlay.compute.simulator.cluster import parse_spec, quotas_from_weights
from underlay.compute.simulator.engine import Simulation
from underlay.compute.simulator.metrics import Report, offered_load
from underlay.compute.simulator.trace import Trace, TraceJob

BASELINES = ("fifo", "fifo-backfill", "first-fit", "las")
"""The simple policies every scenario measures ``default`` against."""

_Job = tuple[str, int, int, int, float]
"""project, whole GPUs per worker (0: a fraction), thousandths (fractions only), gang,
duration in seconds."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """A generated trace, the cluster it runs on, and its projects' quota weights (empty:
    one project, or an even split between several)."""

    name: str
    description: str
    cluster: str
    gpus: int
    trace: Trace
    weights: tuple[tuple[str, float], ...] = ()

    @property
    def offered_load(self) -> float | None:
        """Accelerator-time asked for over capacity times the arrival span (None: a burst)."""
        return offered_load(self.trace.jobs, self.gpus)[0]


def _trace(name: str, jobs: list[_Job], times: list[float]) -> Trace:
    out = []
    for i, ((project, gpus, milli, gang, duration), at) in enumerate(zip(jobs, times, strict=True)):
        cpu = 4000 * gpus if gpus else 2000
        mem = 32768 * gpus if gpus else 16384
        request = Request(cpu, mem, gpus=gpus, gpu_milli=0 if gpus else milli)
        out.append(TraceJob(Workload(f"j{i}", project, request, gang, submit_time=at), duration))
    return Trace.of(name, out)


def _arrivals(rng: random.Random, jobs: list[_Job], load: float, gpus: int) -> list[float]:
    """Poisson arrival times whose span gives ``jobs`` exactly ``load`` on ``gpus``."""
    work = sum((g * WHOLE if g else m) * gang * d for _, g, m, gang, d in jobs) / WHOLE
    span = work / (load * gpus)
    gaps = [rng.expovariate(1.0) for _ in jobs]
    total = sum(gaps[1:]) or 1.0
    times: list[float] = []
    at = 0.0
    for i, gap in enumerate(gaps):
        at += gap * span / total if i else 0.0
        times.append(float(round(at)))  # whole seconds
    return times


def _lognormal(rng: random.Random, median_s: float, sigma: float, cap_s: float) -> float:
    return float(min(cap_s, max(60, round(median_s * math.exp(rng.gauss(0.0, sigma))))))


def _size(rng: random.Random) -> tuple[int, int]:
    """GPUs per worker and gang for mixed training work: mostly small, some wide."""
    roll = rng.random()
    if roll < 0.5:
        return 1, 1
    if roll < 0.65:
        return 2, 1
    if roll < 0.8:
        return 4, 1
    if roll < 0.95:
        return 8, 1
    return 8, 2


def burst_1gpu(seed: int, scale: float) -> Scenario:
    n = max(4, round(200 * scale))
    jobs: list[_Job] = [("p", 1, 0, 1, 7200.0)] * n
    return Scenario(
        "burst-1gpu",
        f"{n} one-GPU jobs of 2 h at once",
        "4x8xA100",
        32,
        _trace("burst-1gpu", jobs, [0.0] * n),
    )


def burst_gangs(seed: int, scale: float) -> Scenario:
    n = max(4, round(40 * scale))
    jobs: list[_Job] = [("p", 8, 0, 2, 14400.0)] * n
    return Scenario(
        "burst-gangs",
        f"{n} gangs of 2 x 8 GPUs for 4 h at once",
        "4x8xA100",
        32,
        _trace("burst-gangs", jobs, [0.0] * n),
    )


def two_projects_wide(seed: int, scale: float) -> Scenario:
    rng = random.Random(seed)
    n = max(8, round(400 * scale))
    jobs: list[_Job] = [
        (
            rng.choice(("a", "b")),
            8,
            0,
            rng.choice((2, 4)),
            _lognormal(rng, 3 * 3600, 1.0, 7 * 86400),
        )
        for _ in range(n)
    ]
    return Scenario(
        "two-projects-wide",
        f"{n} gangs of 16 or 32 GPUs from two projects, 90% load",
        "8x8xA100",
        64,
        _trace("two-projects-wide", jobs, _arrivals(rng, jobs, 0.9, 64)),
        (("a", 1.0), ("b", 1.0)),
    )


def _heavy(load: float) -> Callable[[int, float], Scenario]:
    def make(seed: int, scale: float) -> Scenario:
        rng = random.Random(seed)
        n = max(8, round(2000 * scale))
        jobs: list[_Job] = []
        for _ in range(n):
            gpus, gang = _size(rng)
            project = rng.choice(("p0", "p1", "p2", "p3"))
            jobs.append((project, gpus, 0, gang, _lognormal(rng, 600, 2.0, 14 * 86400)))
        name = f"heavy-{round(load * 100)}"
        return Scenario(
            name,
            f"{n} jobs of 1-16 GPUs, heavy-tailed run times, {load:.0%} load",
            "8x8xA100",
            64,
            _trace(name, jobs, _arrivals(rng, jobs, load, 64)),
            tuple((f"p{i}", 1.0) for i in range(4)),
        )

    return make


def wide_gangs(seed: int, scale: float) -> Scenario:
    rng = random.Random(seed)
    n = max(8, round(400 * scale))
    jobs: list[_Job] = [
        ("p", 8, 0, rng.choice((2, 4, 8)), _lognormal(rng, 2 * 3600, 1.0, 7 * 86400))
        for _ in range(n)
    ]
    return Scenario(
        "wide-gangs",
        f"{n} gangs of 2, 4 or 8 nodes of 8 GPUs, 85% load",
        "16x8xA100",
        128,
        _trace("wide-gangs", jobs, _arrivals(rng, jobs, 0.85, 128)),
    )


def skewed_quotas(seed: int, scale: float) -> Scenario:
    rng = random.Random(seed)
    projects = [f"q{k:02d}" for k in range(1, 13)]
    weights = tuple((p, 1.0 / k) for k, p in enumerate(projects, start=1))
    # Demand skews the other way: the projects with the smallest guarantees ask the most.
    demand = [float(k) for k in range(1, 13)]
    n = max(12, round(2000 * scale))
    jobs: list[_Job] = []
    for _ in range(n):
        gpus, gang = _size(rng)
        project = rng.choices(projects, demand)[0]
        jobs.append((project, gpus, 0, gang, _lognormal(rng, 900, 1.8, 14 * 86400)))
    return Scenario(
        "skewed-quotas",
        f"{n} jobs of twelve projects, guarantees 1/k, demand skewed the other way, 85% load",
        "8x8xA100",
        64,
        _trace("skewed-quotas", jobs, _arrivals(rng, jobs, 0.85, 64)),
        weights,
    )


def notebooks(seed: int, scale: float) -> Scenario:
    rng = random.Random(seed)
    n = max(8, round(1200 * scale))
    jobs: list[_Job] = []
    for _ in range(n):
        project = rng.choice(("r0", "r1", "r2"))
        if rng.random() < 0.5:
            milli = rng.choice((250, 500))
            jobs.append((project, 0, milli, 1, _lognormal(rng, 2 * 3600, 0.8, 2 * 86400)))
        else:
            gpus = rng.choice((1, 1, 2, 4, 8))
            jobs.append((project, gpus, 0, 1, _lognormal(rng, 1800, 1.8, 7 * 86400)))
    return Scenario(
        "notebooks",
        f"{n} jobs: fractional notebooks mixed with 1-8 GPU training, 80% load",
        "4x8xA100",
        32,
        _trace("notebooks", jobs, _arrivals(rng, jobs, 0.8, 32)),
        (("r0", 1.0), ("r1", 1.0), ("r2", 1.0)),
    )


SCENARIOS: dict[str, Callable[[int, float], Scenario]] = {
    "burst-1gpu": burst_1gpu,
    "burst-gangs": burst_gangs,
    "two-projects-wide": two_projects_wide,
    "heavy-70": _heavy(0.70),
    "heavy-85": _heavy(0.85),
    "heavy-95": _heavy(0.95),
    "wide-gangs": wide_gangs,
    "skewed-quotas": skewed_quotas,
    "notebooks": notebooks,
}
"""Every scenario by name: ``SCENARIOS[name](seed, scale)``."""

HEAVY_TAILED = ("heavy-70", "heavy-85", "heavy-95", "skewed-quotas")
"""Scenarios whose run times are heavy-tailed: where serving short work first pays."""


def replay(scenario: Scenario, policy: str, **overrides: Any) -> Report:
    """Replay ``scenario`` under the named policy, with fields of it replaced by
    ``overrides`` (60 s ticks, 60 s restart overhead)."""
    nodes = parse_spec(scenario.cluster)
    quotas = quotas_from_weights(nodes, scenario.weights) if len(scenario.weights) > 1 else ()
    config = policy_config(policy, **overrides)
    return Simulation(scenario.trace, nodes, quotas, config, cluster_name=scenario.cluster).run()
