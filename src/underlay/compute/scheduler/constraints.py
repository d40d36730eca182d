"""Placement constraints that services need: node selectors and per-node spread.

A workload may carry a ``node_selector`` (``key=value`` labels a node must all carry) and a
``max_per_node`` limit: at most that many workers of its ``app`` (or, without an app, of the
workload itself) on one node, counting what already runs there and what this round placed.
Both are hard: every policy places such work only where they hold.

Constrained work takes its own, simpler placement path (nodes in order, each worker on the
first allowed node with room) so that a round of unconstrained work pays nothing for it. Its
preemption plans and backfill holds are limited to the nodes it may run on, each for at most
the workers its spread limit still allows there, so it never preempts for, or holds, room it
could not use; while it waits, its reason names the constraint that blocks it.

Spot nodes (labelled :data:`SPOT_LABEL`) host preemptible work only: the cloud may take such
a node back at any moment, and work that must not be stopped must not run where it will be.
:func:`keep_off_spot` states that rule as a selector, so it takes the same path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from underlay.compute.scheduler.cluster import Alloc, ClusterState
from underlay.compute.scheduler.snapshot import Node, Running, Snapshot, Workload

SPOT_LABEL = "underlay.io/spot=true"
"""The label of a spot (preemptible) node: only preemptible work is placed on it."""
ON_DEMAND_LABEL = "underlay.io/spot=false"
"""The label of an on-demand node; every node without :data:`SPOT_LABEL` counts as one."""


def parse_labels(items: Iterable[str]) -> tuple[str, ...]:
    """``key=value`` labels, stripped, empty items dropped, sorted; ValueError names a bad one."""
    labels: set[str] = set()
    for item in items:
        text = item.strip()
        if not text:
            continue
        key, sep, value = text.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"label {text!r} is not key=value")
        labels.add(f"{key.strip()}={value.strip()}")
    return tuple(sorted(labels))


def keep_off_spot(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` with non-preemptible pending work kept off spot nodes: when some node is
    spot, every other node carries :data:`ON_DEMAND_LABEL` for this round and every
    non-preemptible pending workload selects it (its waiting reason then names the label).
    Without a spot node, or without such work, the snapshot is returned as it is."""
    nodes = snapshot.nodes
    if not any(SPOT_LABEL in n.labels for n in nodes):
        return snapshot
    if all(w.preemptible for w in snapshot.pending):
        return snapshot
    on_demand = tuple(
        n
        if SPOT_LABEL in n.labels or ON_DEMAND_LABEL in n.labels
        else replace(n, labels=tuple(sorted((*n.labels, ON_DEMAND_LABEL))))
        for n in nodes
    )
    pending = tuple(
        w
        if w.preemptible or ON_DEMAND_LABEL in w.node_selector
        else replace(w, node_selector=tuple(sorted((*w.node_selector, ON_DEMAND_LABEL))))
        for w in snapshot.pending
    )
    return replace(snapshot, nodes=on_demand, pending=pending)


def constrained(w: Workload) -> bool:
    return bool(w.node_selector) or w.max_per_node is not None


def app_of(w: Workload) -> str:
    """The name that ``max_per_node`` counts workers under."""
    return w.app or w.id


def matches(node: Node, selector: Sequence[str]) -> bool:
    return all(label in node.labels for label in selector)


class Constraints:
    """The per-round view: which nodes each selector allows, and workers per (app, node)."""

    def __init__(self, state: ClusterState, nodes: Sequence[Node], running: Sequence[Running]):
        self.state = state
        self.nodes = nodes
        self.running = running
        self.allowed_memo: dict[tuple[str, ...], list[int]] = {}
        self.counts: dict[tuple[str, int], int] | None = None

    def allowed(self, w: Workload) -> list[int]:
        key = w.node_selector
        found = self.allowed_memo.get(key)
        if found is None:
            found = [i for i, n in enumerate(self.nodes) if matches(n, key)]
            self.allowed_memo[key] = found
        return found

    def count(self, app: str, node: int) -> int:
        if self.counts is None:
            self.counts = {}
            index = self.state.index
            for r in self.running:
                name = app_of(r.workload)
                for worker in r.workers:
                    n = index.get(worker.node)
                    if n is not None:
                        self.counts[(name, n)] = self.counts.get((name, n), 0) + 1
        return self.counts.get((app, node), 0)

    def room(self, w: Workload, node: int) -> int:
        """Workers of ``w`` its spread limit still allows on ``node``."""
        if w.max_per_node is None:
            return w.gang
        return max(0, w.max_per_node - self.count(app_of(w), node))

    def place(
        self, w: Workload, types: Sequence[str | None]
    ) -> tuple[str | None, list[Alloc]] | None:
        for t in types:
            allocs = self._allocs(w, t)
            if allocs is not None:
                return t, allocs
        return None

    def placed(self, w: Workload, allocs: Sequence[Alloc]) -> None:
        if w.max_per_node is None and w.app is None and self.counts is None:
            return  # nothing counts this workload's workers (it has no app to share)
        self.count(app_of(w), 0)  # make sure the running work is counted first
        assert self.counts is not None
        for a in allocs:
            key = (app_of(w), a.node)
            self.counts[key] = self.counts.get(key, 0) + 1

    def _workers_within_limit(self, w: Workload, types: Sequence[str | None]) -> int:
        """How many of ``w``'s workers its allowed nodes take now within its spread limit
        (on its best type); the state is left as it was."""
        best = 0
        for t in types:
            allocs = self._take(w, t, self.allowed(w))
            self._release(allocs)
            best = max(best, len(allocs))
        return best

    def place_on(self, w: Workload, t: str | None, nodes: Sequence[int]) -> list[Alloc] | None:
        """``w``'s workers on ``nodes`` only (those its selector allows), within its spread
        limit, all of them or none (None)."""
        allowed = set(self.allowed(w))
        return self._all_or_none(w, self._take(w, t, [n for n in nodes if n in allowed]))

    def _allocs(self, w: Workload, t: str | None) -> list[Alloc] | None:
        return self._all_or_none(w, self._take(w, t, self.allowed(w)))

    def _take(self, w: Workload, t: str | None, nodes: Sequence[int]) -> list[Alloc]:
        """As many of ``w``'s workers as ``nodes`` take, in order, within its spread limit
        (allocated in the state)."""
        state = self.state
        allocs: list[Alloc] = []
        for n in nodes:
            for _ in range(min(self.room(w, n), w.gang - len(allocs))):
                a = state.alloc_on(n, w.request, t)
                if a is None:
                    break
                state.allocate(a)
                allocs.append(a)
            if len(allocs) == w.gang:
                break
        return allocs

    def _all_or_none(self, w: Workload, allocs: list[Alloc]) -> list[Alloc] | None:
        if len(allocs) == w.gang:
            return allocs
        self._release(allocs)
        return None

    def _release(self, allocs: list[Alloc]) -> None:
        for a in reversed(allocs):
            self.state.release(a)

    def reason(self, w: Workload, types: Sequence[str | None], no_fit: str) -> str:
        """Why constrained ``w`` could not be placed; ``no_fit`` is the plain capacity reason."""
        nodes = self.allowed(w)
        labels = ", ".join(w.node_selector)
        if not nodes:
            return f"no node with labels {labels}"
        if w.max_per_node is not None:
            fitting = [n for n in nodes if any(self.state.alloc_on(n, w.request, t) for t in types)]
            limit = w.max_per_node
            if fitting and all(self.room(w, n) == 0 for n in fitting):
                return (
                    f"app {app_of(w)} already has {limit} of {limit} workers on every fitting node"
                )
            if fitting:
                held = self._workers_within_limit(w, types)
                return (
                    f"app {app_of(w)} may run at most {limit} per node, and the nodes with "
                    f"room take only {held} of its {w.gang} workers so"
                )
        if labels:
            return f"no node with labels {labels} has room: {no_fit}"
        return no_fit
