"""Preemption: which running workloads to stop so that a waiting one can start, and why.

Three rules make a running workload a victim, each switched on in :class:`.PolicyConfig`:

- **reclaim**: the claimant is within its project's guaranteed quota and the victim's
  project is borrowing above its own guarantee on that accelerator type;
- **priority**: same project, lower priority class;
- **service level** (Tiresias' discretised LAS): the victim has attained a higher service
  level than the claimant (inside the project, or cluster-wide for the ``las`` baseline).

Reclaim, and preemption for a claimant that borrows (one above its project's guarantee),
take from a project at most what it runs above its own guarantee: work within a guarantee is
never a victim for someone else's claim or for borrowing, so the rest must come from idle
capacity or wait. Workloads marked not preemptible are never victims. Victims are ordered
lowest priority first, then least attained service (least progress lost), then most recently
started. Priority and service-level victims must have run
``min_runtime_s``, which stops two workloads from evicting each other in turn. Workloads
already draining after an earlier preemption count first and cost nothing (the claimant may
just be waiting for them), unless their room is already promised to another claimant.

The plan is node-aware: for each worker of the claimant it picks the node where the shortest
prefix of victims makes room (a gang claims all its workers or nothing), so a job needing a
whole 8-GPU node does not evict eight 1-GPU jobs on eight different nodes. Planning releases
victims in the working cluster state, tries the placement and restores everything.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from underlay.compute.scheduler.cluster import Alloc, ClusterState
from underlay.compute.scheduler.ordering import service_level
from underlay.compute.scheduler.packing import choose
from underlay.compute.scheduler.quota import QuotaLedger
from underlay.compute.scheduler.snapshot import WHOLE, PolicyConfig, Running, Workload

MAX_VICTIMS = 128
"""Candidates a plan considers, most preferred first: enough to free any node several times
over, and a bound on the cost of planning on a cluster with thousands of running workloads."""

MAX_SCAN = 512
"""Running workloads examined per accelerator type for one claimant class, latest placed first
(the snapshot's order): with many thousands running, preemption looks at the most recent
ones, which are also the ones with the least progress to lose."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Victims to stop (with the rule that chose each) and the nodes the claimant will use."""

    victims: tuple[tuple[Running, str], ...]
    draining: tuple[Running, ...]
    nodes: tuple[int, ...]


class Preemptor:
    """Finds preemption plans for one decision round."""

    def __init__(
        self,
        config: PolicyConfig,
        clock: float,
        state: ClusterState,
        running: tuple[Running, ...],
        ledger: QuotaLedger | None,
        promised: frozenset[str] = frozenset(),
    ) -> None:
        self.config = config
        self.clock = clock
        self.state = state
        self.ledger = ledger
        self.taken: set[str] = set(promised)
        # What each (project, type) runs above its guarantee: the most that reclaim, or a
        # borrowing claimant, may take from it this round. Taken from the snapshot's running
        # work only, before the round's own placements.
        self.borrow_left: dict[tuple[str, str], int] = (
            {key: ledger.borrowed(*key) for key in ledger.used} if ledger is not None else {}
        )
        self._running = running
        self._by_type: dict[tuple[str | None, str], list[Running]] | None = None
        self._allocs: dict[str, list[Alloc]] = {}
        self._keys: dict[str, tuple[int, float, float, str]] = {}
        self._eligible: dict[tuple[object, ...], list[tuple[Running, str]]] = {}
        self.blocked_until: float | None = None

    @property
    def enabled(self) -> bool:
        c = self.config
        return c.reclaim or c.priority_preemption or (c.las_preemption and bool(c.service_levels))

    def _groups(self) -> dict[tuple[str | None, str], list[Running]]:
        """Preemptible running workloads per (accelerator type, project)."""
        if self._by_type is None:
            groups: dict[tuple[str | None, str], list[Running]] = {}
            for r in self._running:
                w = r.workload
                if w.preemptible:
                    key = (r.gpu_type, w.project)
                    group = groups.get(key)
                    if group is None:
                        groups[key] = [r]
                    else:
                        group.append(r)
            self._by_type = groups
        return self._by_type

    def _victim_key(self, r: Running) -> tuple[int, float, float, str]:
        key = self._keys.get(r.workload.id)
        if key is None:
            key = (r.workload.priority, r.attained(self.clock), -r.started_at, r.workload.id)
            self._keys[r.workload.id] = key
        return key

    def _projects(self, claimant: Workload, gpu_type: str | None, guaranteed: bool) -> list[str]:
        """Projects whose running work could be victims of ``claimant``."""
        c = self.config
        projects = {p for t, p in self._groups() if t == gpu_type}
        if c.las_preemption and c.service_levels and c.las_scope == "cluster":
            return sorted(projects)
        keep = {claimant.project} & projects
        reclaim = guaranteed and c.reclaim
        if (reclaim or c.las_borrowed) and self.ledger is not None and gpu_type is not None:
            keep |= {p for p in projects if self.ledger.borrowed(p, gpu_type) > 0}
        return sorted(keep)

    def _why(
        self, claimant: Workload, victim: Running, gpu_type: str | None, guaranteed: bool
    ) -> str | None:
        c = self.config
        v = victim.workload
        if (
            guaranteed
            and c.reclaim
            and self.ledger is not None
            and gpu_type is not None
            and v.project != claimant.project
            and self.ledger.borrowed(v.project, gpu_type) > 0
        ):
            return (
                f"project {claimant.project} claims back its guaranteed {gpu_type} for "
                f"{claimant.id}; {v.id} borrows it"
            )
        why = self._rank_reason(claimant, victim, gpu_type)
        if why is not None and self.clock - victim.started_at < c.min_runtime_s:
            self._note_eligible_at(victim.started_at + c.min_runtime_s)
            return None
        return why

    def _rank_reason(self, claimant: Workload, victim: Running, gpu_type: str | None) -> str | None:
        """Why ``victim`` ranks below ``claimant`` by priority class or service level."""
        c = self.config
        v = victim.workload
        if (
            c.priority_preemption
            and v.project == claimant.project
            and v.priority < claimant.priority
        ):
            return (
                f"{claimant.id} has priority class {claimant.priority}, above {v.id}'s {v.priority}"
            )
        levels = c.service_levels
        if not (c.las_preemption and levels):
            return None
        if c.las_scope != "cluster" and v.project != claimant.project:
            borrows = (
                c.las_borrowed
                and self.ledger is not None
                and gpu_type is not None
                and self.ledger.borrowed(v.project, gpu_type) > 0
            )
            if not borrows:
                return None
        if v.priority > claimant.priority:
            return None
        mine = service_level(claimant.attained_service, levels)
        attained = victim.attained(self.clock)
        theirs = service_level(attained, levels)
        if theirs > mine:
            return (
                f"{v.id} has received {attained / 3600:.1f} accelerator-hours (service level "
                f"{theirs}); {claimant.id} is at level {mine}"
            )
        if mine < len(levels) and v.gpu_share:
            # It becomes a victim when it crosses the claimant's level threshold.
            self._note_eligible_at(self.clock + (levels[mine] - attained) * 1000 / v.gpu_share)
        return None

    def _note_eligible_at(self, when: float) -> None:
        if when > self.clock and (self.blocked_until is None or when < self.blocked_until):
            self.blocked_until = when

    def victims(
        self, claimant: Workload, gpu_type: str | None, guaranteed: bool
    ) -> list[tuple[Running, str]]:
        """Eligible victims in preference order, draining ones first with an empty reason.

        Eligibility depends on the claimant's project, class and service level only, so it is
        worked out once per such claimant class and round.
        """
        levels = self.config.service_levels
        memo = (
            gpu_type,
            claimant.project,
            claimant.priority,
            service_level(claimant.attained_service, levels) if levels else 0,
            guaranteed,
        )
        found = self._eligible.get(memo)
        if found is None:
            found = self._collect(claimant, gpu_type, guaranteed)
            self._eligible[memo] = found
        taken = self.taken
        if claimant.displaced:  # never preempt the same workload twice for one claimant
            taken = taken | set(claimant.displaced)
        fresh = [v for v in found if v[0].workload.id not in taken]
        draining = [v for v in fresh if not v[1]]
        return draining + [v for v in fresh if v[1]][:MAX_VICTIMS]

    def _collect(
        self, claimant: Workload, gpu_type: str | None, guaranteed: bool
    ) -> list[tuple[Running, str]]:
        eligible = set(self._projects(claimant, gpu_type, guaranteed))
        draining: list[tuple[Running, str]] = []
        chosen: list[tuple[Running, str]] = []
        budget = MAX_SCAN
        for (t, project), group in self._groups().items():
            if t != gpu_type:
                continue
            for r in reversed(group):  # the latest placed first: least progress to lose
                if r.draining_until is None and project in eligible:
                    budget -= 1
                    if budget < 0:
                        break
                if r.draining_until is not None:
                    draining.append((r, ""))  # any project's: it is leaving anyway
                    continue
                if project not in eligible:
                    continue
                why = self._why(claimant, r, gpu_type, guaranteed)
                if why is not None:
                    chosen.append((r, why))
        # Keep a margin over the cap, since earlier plans of the round may take some.
        best = heapq.nsmallest(4 * MAX_VICTIMS, chosen, key=lambda item: self._victim_key(item[0]))
        return draining + best

    def _alloc_of(self, r: Running) -> list[Alloc]:
        cached = self._allocs.get(r.workload.id)
        if cached is not None:
            return cached
        req = r.workload.request
        out: list[Alloc] = []
        for w in r.workers:
            node = self.state.index.get(w.node)
            if node is None:
                continue
            n_gpus = len(self.state.gpu_free[node])
            gpus = tuple(g for g in w.gpus if 0 <= g < n_gpus)
            out.append(Alloc(node, gpus, w.gpu_milli, req.cpu_milli, req.memory_mib))
        self._allocs[r.workload.id] = out
        return out

    def plan(
        self,
        claimant: Workload,
        gpu_type: str | None,
        guaranteed: bool,
        rooms: dict[int, int] | None = None,
    ) -> Plan | None:
        """A plan that lets ``claimant`` start once its victims are gone, or None.

        ``rooms`` (for constrained work) maps each node the claimant may run on to how many
        of its workers may go there; the plan frees room only on those nodes, within those
        counts, so it never preempts for room the claimant could not use.
        """
        candidates = self.victims(claimant, gpu_type, guaranteed)
        if not candidates:
            return None
        state = self.state
        rank = {r.workload.id: i for i, (r, _) in enumerate(candidates)}
        on_node: dict[int, list[tuple[Running, str]]] = {}
        for r, why in candidates:
            for a in self._alloc_of(r):
                if rooms is None or rooms.get(a.node, 0) > 0:
                    on_node.setdefault(a.node, []).append((r, why))
        left_rooms = dict(rooms) if rooms is not None else None
        released: list[Alloc] = []
        placed: list[Alloc] = []
        chosen: dict[str, tuple[Running, str]] = {}
        left = dict(self.borrow_left)
        # Under quotas, victims are bounded by what their project borrows (see _affordable).
        bounded = self.ledger is not None and gpu_type is not None
        ok = True
        for _ in range(claimant.gang):
            alloc = self._choose(claimant, gpu_type, left_rooms)
            if alloc is None:
                best = self._best_node(
                    claimant,
                    gpu_type,
                    on_node,
                    chosen,
                    rank,
                    left if bounded else None,
                    guaranteed,
                    left_rooms,
                )
                if best is None:
                    ok = False
                    break
                for r, why in best:
                    if (
                        bounded
                        and why
                        and not (guaranteed and r.workload.project == claimant.project)
                    ):
                        key = (r.workload.project, str(gpu_type))
                        left[key] = left.get(key, 0) - r.workload.gpu_share
                    chosen[r.workload.id] = (r, why)
                    for a in self._alloc_of(r):
                        state.release(a)
                        released.append(a)
                alloc = self._choose(claimant, gpu_type, left_rooms)
                if alloc is None:
                    ok = False
                    break
            state.allocate(alloc)
            placed.append(alloc)
            if left_rooms is not None:
                left_rooms[alloc.node] -= 1
        for a in reversed(placed):
            state.release(a)
        for a in reversed(released):
            state.allocate(a)
        if not ok or not chosen:
            return None
        victims = tuple(v for v in chosen.values() if v[1])
        draining = tuple(r for r, why in chosen.values() if not why)
        self.taken.update(chosen)
        self.borrow_left = left
        return Plan(victims, draining, tuple(sorted({a.node for a in placed})))

    def _choose(
        self, claimant: Workload, gpu_type: str | None, rooms: dict[int, int] | None
    ) -> Alloc | None:
        """Where one worker of ``claimant`` fits now: anywhere, or only within ``rooms``."""
        if rooms is None:
            return choose(self.state, claimant.request, [gpu_type], None, None)
        for node in sorted(rooms):
            if rooms[node] > 0:
                alloc = self.state.alloc_on(node, claimant.request, gpu_type)
                if alloc is not None:
                    return alloc
        return None

    def _affordable(
        self,
        claimant: Workload,
        guaranteed: bool,
        victim: Running,
        gpu_type: str | None,
        left: dict[tuple[str, str], int] | None,
        spent: dict[tuple[str, str], int],
    ) -> bool:
        """Whether taking ``victim`` stays within what its project borrows (and count it).

        Only a claimant within its guarantee taking from its own project (a priority class
        or service level inside the project) is not bounded.
        """
        if left is None:
            return True
        v = victim.workload
        if guaranteed and v.project == claimant.project:
            return True
        key = (v.project, str(gpu_type))
        after = spent.get(key, 0) + v.gpu_share
        if after > left.get(key, 0):
            return False
        spent[key] = after
        return True

    def _could_fit(
        self,
        claimant: Workload,
        gpu_type: str | None,
        node: int,
        here: list[tuple[Running, str]],
    ) -> bool:
        """Whether releasing every candidate on ``node`` could make room there at all (an upper
        bound, checked before any release is tried)."""
        state = self.state
        req = claimant.request
        cpu, mem = state.free_cpu[node], state.free_mem[node]
        touched: set[int] = set()
        for r, _ in here:
            for a in self._alloc_of(r):
                if a.node == node:
                    cpu += a.cpu_milli
                    mem += a.memory_mib
                    touched.update(a.gpus)
        if cpu < req.cpu_milli or mem < req.memory_mib:
            return False
        if not req.gpus:
            return True
        frees = state.gpu_free[node]
        types = state.gpu_type[node]
        usable = sum(
            1
            for g, f in enumerate(frees)
            if (f == WHOLE or g in touched) and gpu_type in (None, types[g])
        )
        return usable >= req.gpus

    def _best_node(
        self,
        claimant: Workload,
        gpu_type: str | None,
        on_node: dict[int, list[tuple[Running, str]]],
        chosen: dict[str, tuple[Running, str]],
        rank: dict[str, int],
        left: dict[tuple[str, str], int] | None,
        guaranteed: bool,
        rooms: dict[int, int] | None = None,
    ) -> list[tuple[Running, str]] | None:
        state = self.state
        best: list[tuple[Running, str]] | None = None
        best_cost: tuple[int, int] | None = None
        for node, here in on_node.items():
            if rooms is not None and rooms.get(node, 0) <= 0:
                continue
            if not state.available(node) or not self._could_fit(claimant, gpu_type, node, here):
                continue
            trial: list[tuple[Running, str]] = []
            undo: list[Alloc] = []
            spent: dict[tuple[str, str], int] = {}
            for r, why in here:
                if r.workload.id in chosen or any(r is t for t, _ in trial):
                    continue
                if why and not self._affordable(claimant, guaranteed, r, gpu_type, left, spent):
                    continue
                trial.append((r, why))
                for a in self._alloc_of(r):
                    state.release(a)
                    undo.append(a)
                if state.alloc_on(node, claimant.request, gpu_type) is not None:
                    cost = (
                        sum(1 for _, w in trial if w),
                        max(rank[t.workload.id] for t, _ in trial),
                    )
                    if best_cost is None or cost < best_cost:
                        best, best_cost = list(trial), cost
                    break
            for a in reversed(undo):
                state.allocate(a)
        return best
