"""Autoscaling and spot in the simulator: node groups that grow and shrink during a replay,
decided by the same :func:`~underlay.compute.autoscaler.policy.plan_scaling` as the live
autoscaler, and spot nodes that the cloud takes back at a seeded random rate.

Each group has ``max_nodes`` slots in the virtual cluster; a slot that is off is an
unhealthy node (the scheduler waits for it rather than refusing work only it could host, as
in the live loop). A launched node is up ``boot_s`` later; a node idle for ``idle_s`` goes.
A spot node is lost after an exponential time with mean ``1 / spot_loss_per_hour`` hours
(drawn from a generator seeded with the replay's seed): its jobs stop at once, without a
grace period, and return to the queue with the work they had left plus the restart
overhead, as a preemption does.

What a node costs runs from its launch (booting is billed, as clouds bill) to its
termination or loss, at its group's price per hour.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from underlay.compute.autoscaler.policy import (
    Member,
    Pool,
    ScaleInput,
    busy_nodes,
    plan_scaling,
    track_idle,
)
from underlay.compute.autoscaler.providers import NodeGroup
from underlay.compute.scheduler import Decisions, Node, Snapshot
from underlay.compute.simulator.cluster import GPU_MEMORY_MIB
from underlay.errors import InvalidInput

if TYPE_CHECKING:
    from underlay.compute.simulator.engine import Simulation

BOOT, RECHECK, LOSS = 2, 3, 4
"""Event kinds of the fleet in the simulation's queue (0 and 1 are the jobs')."""


@dataclass(frozen=True, slots=True)
class AutoscaleSpec:
    """The groups of a replay and how the fleet behaves."""

    pools: tuple[Pool, ...]
    boot_s: float = 120.0
    idle_s: float = 600.0
    spot_loss_per_hour: float = 0.0
    max_price_per_hour: float | None = None


@dataclass(frozen=True, slots=True)
class AutoscaleReport:
    cost: float
    node_hours: float
    spot_node_hours: float
    gpu_hours_provisioned: float
    provisioned_utilization: float
    launches: int
    terminations: int
    spot_losses: int
    peak_nodes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_GROUP = re.compile(r"^(\d+)-(\d+)x(\d+)(?:x([A-Za-z0-9_.-]+))?((?::[a-z]+(?:=[\d.]+)?)*)$")


def parse_groups(spec: str, prices: dict[str, float] | None = None) -> tuple[Pool, ...]:
    """Groups from ``MIN-MAXxGPUSxTYPE[:spot][:price=P][:cpu=N][:mem=GIB]``, comma separated
    (``0-16x8xA100:price=20,0-16x8xA100:spot:price=7``). Without ``price`` a node costs the
    ``prices`` table's per-GPU price (default 2.0) per accelerator, or 0.04 per core."""
    table = prices or {"default": 2.0, "cpu": 0.04}
    pools = []
    for i, part in enumerate(p.strip() for p in spec.split(",")):
        match = _GROUP.match(part)
        if match is None:
            raise InvalidInput(
                f"autoscale group {part!r} is not MIN-MAXxGPUSxTYPE[:spot][:price=P]"
                "[:cpu=N][:mem=GIB] (example: 0-16x8xA100:spot:price=7)"
            )
        low, high, gpus, gpu_type, opts = match.groups()
        options = {k: v for k, _, v in (o.partition("=") for o in opts.split(":") if o)}
        bad = sorted(set(options) - {"spot", "price", "cpu", "mem"})
        if bad:
            raise InvalidInput(f"autoscale group {part!r}: unknown option(s) {', '.join(bad)}")
        if int(low) > int(high):
            raise InvalidInput(f"autoscale group {part!r}: MIN {low} is above MAX {high}")
        if int(gpus) and not gpu_type:
            raise InvalidInput(f"autoscale group {part!r} has GPUs but no type")
        group = NodeGroup(
            name=f"g{i}{'-spot' if 'spot' in options else ''}",
            cpu_milli=int(options.get("cpu") or 64) * 1000,
            memory_mib=int(options.get("mem") or 512) * 1024,
            accelerator_type=gpu_type or None,
            accelerators=int(gpus),
            accelerator_memory_mib=GPU_MEMORY_MIB.get(gpu_type or "", 16384),
            min_nodes=int(low),
            max_nodes=int(high),
            spot="spot" in options,
        )
        if options.get("price"):
            price = float(options["price"])
        else:
            per = table.get(gpu_type or "", table.get("default", 0.0))
            price = group.gpus * per if group.gpus else group.cpu_milli / 1000 * table["cpu"]
        pools.append(Pool(group, price))
    return tuple(pools)


def slot_nodes(spec: AutoscaleSpec) -> tuple[Node, ...]:
    """Every slot of every group, off (unhealthy)."""
    return tuple(
        p.group.node(f"{p.group.name}-{i:03d}", healthy=False)
        for p in spec.pools
        for i in range(p.group.max_nodes)
    )


class Fleet:
    """The autoscaled part of one simulation's cluster."""

    def __init__(self, sim: Simulation, spec: AutoscaleSpec, seed: int) -> None:
        self.sim, self.spec = sim, spec
        self.rng = random.Random(seed)
        self.group_of: dict[str, Pool] = {}
        for pool in spec.pools:
            for i in range(pool.group.max_nodes):
                self.group_of[f"{pool.group.name}-{i:03d}"] = pool
        self.state: dict[str, str] = dict.fromkeys(self.group_of, "off")
        self.since: dict[str, float] = {}  # launch time of booting and on nodes
        self.epoch: dict[str, int] = dict.fromkeys(self.group_of, 0)
        self.idle: dict[str, float | None] = {}
        self.cost = self.node_s = self.spot_s = self.gpu_s = 0.0
        self.launches = self.terminations = self.losses = self.peak = 0

    def step(self, snapshot: Snapshot, decisions: Decisions) -> None:
        """Plan at the tick and carry the plan out."""
        clock = snapshot.clock
        on = [n for n, s in self.state.items() if s == "on"]
        self.idle = track_idle(self.idle, on, busy_nodes(snapshot, decisions), clock)
        members = tuple(
            Member(n, self.group_of[n].group.name, s == "on", self.since[n], self.idle.get(n))
            for n, s in self.state.items()
            if s != "off"
        )
        plan = plan_scaling(
            ScaleInput(
                snapshot,
                decisions,
                self.spec.pools,
                members,
                max_price_per_hour=self.spec.max_price_per_hour,
                idle_s=self.spec.idle_s,
                launch_timeout_s=self.spec.boot_s + 3600.0,
            )
        )
        for t in plan.terminates:
            self._off(t.node, clock)
            self.terminations += 1
        for launch in plan.launches:
            free = [n for n, p in self.group_of.items()
                    if p.group.name == launch.group and self.state[n] == "off"]  # fmt: skip
            for node in free[: launch.count]:
                self.state[node], self.since[node] = "booting", clock
                self.launches += 1
                self._push(clock + self.spec.boot_s, BOOT, node)
        self.peak = max(self.peak, sum(1 for s in self.state.values() if s != "off"))
        if plan.recheck_at is not None:
            self._push(plan.recheck_at, RECHECK, "")

    def fire(self, kind: int, node: str, epoch: int) -> None:
        if kind == RECHECK or self.epoch[node] != epoch:
            return
        if kind == BOOT and self.state[node] == "booting":
            self.state[node] = "on"
            self._set_health(node, True)
            pool = self.group_of[node]
            rate = self.spec.spot_loss_per_hour
            if pool.group.spot and rate > 0:
                self._push(self.sim.clock + self.rng.expovariate(rate) * 3600.0, LOSS, node)
        elif kind == LOSS and self.state[node] == "on":
            self.sim.stop_node(node)
            self._off(node, self.sim.clock)
            self.losses += 1

    def _off(self, node: str, clock: float) -> None:
        self._bill(node, clock)
        if self.state[node] == "on":
            self._set_health(node, False)
        self.state[node] = "off"
        self.epoch[node] += 1
        self.since.pop(node, None)
        self.idle.pop(node, None)

    def _bill(self, node: str, clock: float) -> None:
        seconds = max(0.0, clock - self.since.get(node, clock))
        pool = self.group_of[node]
        self.cost += seconds / 3600.0 * pool.price
        self.node_s += seconds
        self.gpu_s += seconds * pool.group.gpus
        if pool.group.spot:
            self.spot_s += seconds

    def _set_health(self, node: str, healthy: bool) -> None:
        sim = self.sim
        n = sim.index[node]
        sim.nodes[n] = replace(sim.nodes[n], healthy=healthy)

    def _push(self, when: float, kind: int, node: str) -> None:
        self.sim.push_fleet(when, kind, node, self.epoch.get(node, 0))

    def report(self, clock: float, allocated_gpu_s: float, static_gpu_s: float) -> AutoscaleReport:
        """The fleet's figures at ``clock``; utilisation is the allocated GPU-time over what
        was provisioned (the static nodes' GPUs for the whole replay plus the fleet's)."""
        for node, state in self.state.items():
            if state != "off":
                self._bill(node, clock)
                self.since[node] = clock
        provisioned = static_gpu_s + self.gpu_s
        return AutoscaleReport(
            cost=self.cost,
            node_hours=self.node_s / 3600.0,
            spot_node_hours=self.spot_s / 3600.0,
            gpu_hours_provisioned=self.gpu_s / 3600.0,
            provisioned_utilization=allocated_gpu_s / provisioned if provisioned else 0.0,
            launches=self.launches,
            terminations=self.terminations,
            spot_losses=self.losses,
            peak_nodes=self.peak,
        )
