"""The autoscaling policy: a pure function from the scheduler's view to scale-up and
scale-down decisions.

Demand is measured by the scheduler itself, not guessed: the policy adds not-yet-launched
nodes of a group to the scheduler's snapshot and calls the same
:func:`~underlay.compute.scheduler.decide`; the nodes that work would be placed on are the
nodes to launch. So a job that waits for its quota, its low-carbon window or a selector no
group satisfies launches nothing, and spot groups get only preemptible work (the scheduler
keeps other work off spot nodes). Groups are tried cheapest first; nodes already launching
count as capacity, so a slow boot does not launch twice.

Bounds, all hard: a group never exceeds ``max_nodes``; the hourly price of every autoscaled
node together never exceeds ``max_price_per_hour``; work of a project whose budget is spent
(:func:`underlay.compute.budgets.budget_status` says ``blocked``) launches nothing. Scale-down:
a node of a group idle for ``idle_s`` is terminated while the group stays at ``min_nodes`` or
more; a launched instance whose agent has not registered within ``launch_timeout_s`` is
terminated too.

The live loop (:mod:`.runtime`) and the simulator call :func:`plan_scaling` alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from underlay.compute.autoscaler.providers import NodeGroup
from underlay.compute.scheduler import Decisions, Node, Snapshot, decide


@dataclass(frozen=True, slots=True)
class Member:
    """One instance of a group as the policy sees it: the node name its agent registers
    under, whether its node is up (``ready``: registered and not lost), since when it is
    idle (None while work runs on it, or while it is not ready for work) and when it was
    launched (clock seconds)."""

    node: str
    group: str
    ready: bool
    launched_at: float
    idle_since: float | None = None


@dataclass(frozen=True, slots=True)
class Pool:
    """A group and its price per hour."""

    group: NodeGroup
    price: float


@dataclass(frozen=True, slots=True)
class ScaleInput:
    """Everything one autoscaling decision depends on. ``snapshot`` and ``decisions`` are the
    scheduler's for the same moment (``snapshot.clock`` is the clock here)."""

    snapshot: Snapshot
    decisions: Decisions
    pools: tuple[Pool, ...]
    members: tuple[Member, ...] = ()
    blocked_projects: frozenset[str] = frozenset()
    max_price_per_hour: float | None = None
    idle_s: float = 300.0
    launch_timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Launch:
    group: str
    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class Terminate:
    node: str
    group: str
    reason: str


@dataclass(frozen=True, slots=True)
class ScalePlan:
    """What to launch and terminate now; ``recheck_at`` is when an idle node reaches its
    idle time (None if no idle node will)."""

    launches: tuple[Launch, ...] = ()
    terminates: tuple[Terminate, ...] = ()
    recheck_at: float | None = None


def plan_scaling(inp: ScaleInput) -> ScalePlan:
    """Decide which groups grow by how much and which nodes go (see the module docstring)."""
    clock = inp.snapshot.clock
    terminates = _timed_out(inp, clock)
    known = {p.group.name for p in inp.pools}
    terminates += [
        Terminate(m.node, m.group, f"its group {m.group} is no longer configured")
        for m in inp.members
        if m.group not in known
    ]
    gone = {t.node for t in terminates}
    members = [m for m in inp.members if m.node not in gone]
    count = {p.group.name: 0 for p in inp.pools}
    for m in members:
        count[m.group] = count.get(m.group, 0) + 1
    price = {p.group.name: p.price for p in inp.pools}
    spent = sum(price.get(m.group, 0.0) for m in members)
    launches: list[Launch] = []
    planned: list[Node] = []
    for pool in sorted(inp.pools, key=lambda p: p.price):
        group = pool.group
        need = max(0, group.min_nodes - count[group.name])
        need = min(need, _room(pool, count[group.name], spent, inp.max_price_per_hour))
        if need:
            launches.append(Launch(group.name, need, f"group {group.name} keeps {group.min_nodes}"))
            count[group.name] += need
            spent += need * pool.price
            planned += [group.node(f"{group.name}/min-{i}") for i in range(need)]
    seen = {n.name for n in inp.snapshot.nodes}  # a lost node of a live instance is there
    booting = [
        _pool(inp, m.group).group.node(m.node)
        for m in members
        if not m.ready and m.node not in seen
    ]
    for launch in _scale_up(inp, count, spent, [*booting, *planned]):
        launches.append(launch)
        count[launch.group] += launch.count
    down, recheck = _scale_down(inp, members, count, {x.group for x in launches}, clock)
    return ScalePlan(tuple(launches), (*terminates, *down), recheck)


def _pool(inp: ScaleInput, name: str) -> Pool:
    for pool in inp.pools:
        if pool.group.name == name:
            return pool
    raise KeyError(name)


def _room(pool: Pool, current: int, spent: float, cap: float | None) -> int:
    """How many more nodes ``pool`` may take: its maximum, and the price cap."""
    room = max(0, pool.group.max_nodes - current)
    if cap is not None and pool.price > 0:
        room = min(room, max(0, math.floor((cap - spent) / pool.price + 1e-9)))
    return room


def _timed_out(inp: ScaleInput, clock: float) -> list[Terminate]:
    limit = inp.launch_timeout_s
    return [
        Terminate(m.node, m.group, f"its node is not up {limit:g} s after its launch")
        for m in inp.members
        if not m.ready and clock - m.launched_at >= limit
    ]


def _waiting_workers(inp: ScaleInput, decisions: Decisions, among: set[str]) -> int:
    waiting = {w.workload_id for w in decisions.waits} & among
    return sum(w.gang for w in inp.snapshot.pending if w.id in waiting)


def _scale_up(
    inp: ScaleInput, count: dict[str, int], spent: float, coming: list[Node]
) -> Iterable[Launch]:
    """Per group, cheapest first: how many of its nodes the waiting work would be placed on."""
    eligible = {w.id for w in inp.snapshot.pending if w.project not in inp.blocked_projects}
    waiting = {w.workload_id for w in inp.decisions.waits} & eligible
    if not waiting:
        return
    base = replace(
        inp.snapshot,
        nodes=(*inp.snapshot.nodes, *coming),
        pending=tuple(w for w in inp.snapshot.pending if w.id in eligible),
    )
    left = _waiting_workers(inp, decide(base) if coming else inp.decisions, waiting)
    for pool in sorted(inp.pools, key=lambda p: p.price):
        group = pool.group
        room = min(left, _room(pool, count[group.name], spent, inp.max_price_per_hour))
        if room <= 0:
            continue
        extra = tuple(group.node(f"{group.name}/new-{i}") for i in range(room))
        trial = decide(replace(base, nodes=(*base.nodes, *extra)))
        names = {n.name for n in extra}
        used = {w.node for p in trial.places for w in p.workers if w.node in names}
        if not used:
            continue
        k = len(used)
        base = replace(base, nodes=(*base.nodes, *(n for n in extra if n.name in used)))
        spent += k * pool.price
        count[group.name] += k
        left = _waiting_workers(inp, trial, waiting)
        yield Launch(group.name, k, _why(inp, trial, waiting, names))
        if left <= 0:
            return


def _why(inp: ScaleInput, trial: Decisions, waiting: set[str], names: set[str]) -> str:
    ids = sorted(
        {p.workload_id for p in trial.places if p.workload_id in waiting}
        & {p.workload_id for p in trial.places if any(w.node in names for w in p.workers)},
        key=lambda s: (len(s), s),
    )
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    return f"waiting work ({shown or 'queued jobs'}) fits it"


def _scale_down(
    inp: ScaleInput,
    members: list[Member],
    count: Mapping[str, int],
    growing: set[str],
    clock: float,
) -> tuple[list[Terminate], float | None]:
    held = {n for c in inp.decisions.claims for n in c.nodes}
    left = dict(count)
    out: list[Terminate] = []
    recheck: float | None = None
    idle = sorted(
        (m for m in members if m.ready and m.idle_since is not None and m.node not in held),
        key=lambda m: (m.idle_since, m.node),
    )
    for m in idle:
        assert m.idle_since is not None
        due = m.idle_since + inp.idle_s
        group = _pool(inp, m.group).group
        if m.group in growing or left[m.group] <= group.min_nodes:
            continue
        if clock < due:
            recheck = due if recheck is None else min(recheck, due)
            continue
        left[m.group] -= 1
        out.append(Terminate(m.node, m.group, f"idle for {clock - m.idle_since:.0f} s"))
    return out, recheck


def track_idle(
    previous: Mapping[str, float | None], ready: Iterable[str], busy: set[str], clock: float
) -> dict[str, float | None]:
    """Since when each ready node is idle: None while busy, else the time it was first seen
    idle (kept from ``previous``)."""
    out: dict[str, float | None] = {}
    for node in ready:
        if node in busy:
            out[node] = None
        else:
            before = previous.get(node)
            out[node] = before if before is not None else clock
    return out


def busy_nodes(snapshot: Snapshot, decisions: Decisions) -> set[str]:
    """Nodes with work on them: running in ``snapshot`` or placed by ``decisions``."""
    nodes = {w.node for r in snapshot.running for w in r.workers}
    return nodes | {w.node for p in decisions.places for w in p.workers}
