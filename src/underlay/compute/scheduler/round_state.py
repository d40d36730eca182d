"""The working state of one scheduling round, and the steps every pass shares.

:class:`RoundState` is what :func:`.policy.decide` sets up from a snapshot (the cluster's
free capacity and indexes, the quota ledger, fair share, the workload mix for packing, the
preemption planner, the constraints' counts, and the memos that keep a round over thousands
of pending workloads cheap) and the steps that its passes share: the reject check, the types
a workload may use, placing a workload and recording the placement (which charges the
ledger and fair share, and clears the class memos the placement changes). The passes
themselves (claims, the guaranteed pass, the borrowing pass, preemption) are in
:mod:`.policy`.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from underlay.compute.scheduler.cluster import Alloc, ClusterState
from underlay.compute.scheduler.constraints import Constraints, app_of
from underlay.compute.scheduler.decisions import Abandon, Place, Preempt, Reject, Wait
from underlay.compute.scheduler.energy import type_order
from underlay.compute.scheduler.feasibility import never_fits
from underlay.compute.scheduler.fragmentation import FragModel
from underlay.compute.scheduler.packing import Cursors, place_workers
from underlay.compute.scheduler.preemption import Preemptor
from underlay.compute.scheduler.quota import FairShare, QuotaLedger, running_counts
from underlay.compute.scheduler.reasons import no_fit_reason
from underlay.compute.scheduler.snapshot import WHOLE, Claim, Snapshot, WorkerPlacement, Workload

MAX_PREEMPTORS = 16
"""Workloads that may start a preemption plan in one round."""

MAX_PLAN_ATTEMPTS = 8
"""Preemption plans tried (found or not) in one round: with the victim cap of
:mod:`.preemption`, this bounds what preemption can add to the cost of a round."""

Shape = tuple[object, ...]

Group = tuple[str, str | None]
"""A project and the accelerator type its workloads ask for (None: any)."""


class RoundState:
    """One round's working state and shared steps (see the module docstring)."""

    def __init__(self, snapshot: Snapshot) -> None:
        cfg = snapshot.config
        self.snap = snapshot
        self.cfg = cfg
        self.state = ClusterState(snapshot.nodes)
        self.first_fit = cfg.packing == "first-fit"
        self.cursors: Cursors | None = {} if self.first_fit else None
        quotas = cfg.quotas and bool(snapshot.quotas)
        # With one project asking, fair share orders nothing: skip its set-up. (Asking
        # whether any project differs from the first stops at the first that does.)
        projects = map(attrgetter("project"), snapshot.pending)
        first = next(projects, None)
        fair = cfg.order == "fair" and any(p != first for p in projects)
        mix = not self.first_fit and not snapshot.demand
        # The running work, counted once for all that reads it (ledger, fair share, mix).
        counts = running_counts(snapshot.running) if quotas or fair or mix else {}
        self.ledger = QuotaLedger(snapshot.quotas, counts) if quotas else None
        self.fair: FairShare | None = None
        if fair:
            s = self.state
            self.fair = FairShare(s.type_total, sum(s.cap_cpu), sum(s.cap_mem), counts)
        self.model: FragModel | None = None
        # The workload mix of pending and running work, for fragmentation-aware packing.
        # Without claims to honour, nothing is placed before every pending workload went
        # through the reject check, whose memo counts their shapes: the mix is taken from
        # those counts then (see :meth:`_mix_from_rejects`), not from one more pass.
        self.running_counts = counts
        self.mix_later = mix and not snapshot.claims
        if snapshot.demand and not self.first_fit:
            self.model = FragModel.of((d.request, d.count) for d in snapshot.demand)
        elif mix and snapshot.claims:
            of = attrgetter("gpus", "gpu_milli", "cpu_milli", "memory_mib")
            shapes = Counter(map(of, map(attrgetter("request"), snapshot.pending)))
            self.model = self._mix_model(shapes)
        self.claims: list[Claim] = []
        self.abandoned: list[Abandon] = []
        self.no_preempt: set[str] = set()
        # Workloads still leaving for a claim made earlier: their room is promised.
        promised: frozenset[str] = frozenset()
        if snapshot.claims:
            leaving = {r.workload.id for r in snapshot.running if r.draining_until is not None}
            promised = frozenset(v for c in snapshot.claims for v in c.victims if v in leaving)
        self.preemptor = Preemptor(
            cfg, snapshot.clock, self.state, snapshot.running, self.ledger, promised
        )
        self.places: list[Place] = []
        self.preempts: list[Preempt] = []
        self.waits: list[Wait] = []
        self.rejects: list[Reject] = []
        self.recheck: float | None = None
        self.nofit: set[tuple[object, ...]] = set()
        self.reasons: dict[tuple[object, ...], str] = {}
        self.noplan: set[tuple[object, ...]] = set()
        # [reason or None, workloads seen] per (type, gpus, thousandths, cpu, memory, gang)
        self.reject_memo: dict[tuple[str | None, int, int, int, int, int], list[Any]] = {}
        self.reject_unmemoised: list[Workload] = []
        self.head: str | None = None
        self.failed: dict[tuple[object, ...], str] = {}
        self.type_memo: dict[str | None, list[str | None]] = {}
        # Per workload class (see :meth:`_admit`; the key starts with its group: project and
        # type asked for), one cell: [types within the guarantee, verdict key, reason to wait
        # if already known, borrow cell], the first None while not worked out; and for a
        # class that borrows, a borrow cell: [verdict key, reason to wait], both None while
        # not worked out. A cell is valid until the project's next placement on a type the
        # class may use, which is when its usage, all it depends on beyond the class,
        # changes: each group's valid cells are listed so that such a placement clears
        # exactly those. A borrower is queued with its class's borrow cell, so the borrowing
        # pass finds what its class knows without a look-up.
        self.class_memo: dict[Shape, list[Any]] = {}
        self.class_cells: dict[Group, list[list[Any]]] = {}
        self.borrow_cells: dict[Group, list[list[Any]]] = {}
        self.quota_texts: dict[tuple[str, str, int], str] = {}
        # Each borrower and its borrow cell, one after the other (no pair to allocate for
        # thousands of borrowers): in one list, or per project for fair share.
        self.borrowers: list[Any] = []
        self.borrow_queues: dict[str, deque[Any]] = {}
        self.held_for: list[str] = []
        self.constraints = Constraints(self.state, snapshot.nodes, snapshot.running)
        self.reservations_left = cfg.reservations
        self.plans_left = MAX_PREEMPTORS
        self.attempts_left = MAX_PLAN_ATTEMPTS

    def _reject(self, w: Workload) -> str | None:
        if w.max_per_node is not None and w.max_per_node < 1:
            self.reject_unmemoised.append(w)
            return f"max_per_node must be at least 1 (got {w.max_per_node})"
        r = w.request
        key = (r.gpu_type, r.gpus, r.gpu_milli, r.cpu_milli, r.memory_mib, w.gang)
        entry = self.reject_memo.get(key)
        if entry is None:
            entry = self.reject_memo[key] = [never_fits(self.state, w), 0]
        entry[1] += 1
        reason: str | None = entry[0]
        return reason

    def _mix_from_rejects(self) -> None:
        """The workload mix, once every pending workload went through :meth:`_reject`: its
        memo counted them by shape (one count per workload, whatever its gang)."""
        shapes: dict[tuple[int, int, int, int], int] = {}
        for (_, gpus, milli, cpu, mem, _), (_, n) in self.reject_memo.items():
            shapes[(gpus, milli, cpu, mem)] = shapes.get((gpus, milli, cpu, mem), 0) + n
        for w in self.reject_unmemoised:
            r = w.request
            key = (r.gpus, r.gpu_milli, r.cpu_milli, r.memory_mib)
            shapes[key] = shapes.get(key, 0) + 1
        self.model = self._mix_model(shapes)

    def _mix_model(self, shapes: dict[tuple[int, int, int, int], int]) -> FragModel | None:
        """The model for pending work counted in ``shapes``, with the running work added.
        (The model sorts its shapes by count: the order they are counted in does not matter.)"""
        for (_, _, gpus, milli, cpu, mem, _, _), n in self.running_counts.items():
            shapes[(gpus, milli, cpu, mem)] = shapes.get((gpus, milli, cpu, mem), 0) + n
        return FragModel.of_shapes(shapes)

    def _types(self, w: Workload) -> list[str | None]:
        req = w.request
        if not req.gpus and not req.gpu_milli:
            return [None]
        key = req.gpu_type
        types = self.type_memo.get(key)
        if types is None:
            s = self.state
            power = s.power if self.cfg.energy_aware else {}
            types = list(type_order(w.request, s.types, power, self.cfg.energy_aware))
            self.type_memo[key] = types
        return types

    def _try_place(self, w: Workload, types: list[str | None], borrowed: bool) -> bool:
        r = w.request
        if w.node_selector or w.max_per_node is not None:  # constrained(w)
            key = (*shape(w, None), *types)
            if key in self.nofit:
                return False
            return self._place_constrained(w, types, borrowed, key)
        key = (None, r.gpus, r.gpu_milli, r.cpu_milli, r.memory_mib, w.gang, *types)  # shape
        if key in self.nofit:
            return False
        placed = place_workers(
            self.state,
            r,
            w.gang,
            types,
            self.model,
            self.cursors,
            self.cfg.energy_aware,
        )
        if placed is None:
            self.nofit.add(key)
            return False
        t, allocs = placed
        self._record_place(w, t, allocs, borrowed)
        return True

    def _place_constrained(
        self, w: Workload, types: list[str | None], borrowed: bool, key: tuple[object, ...]
    ) -> bool:
        placed = self.constraints.place(w, types)
        if placed is None:
            self.nofit.add(key)
            return False
        self._record_place(w, placed[0], placed[1], borrowed)
        return True

    def _record_place(
        self, w: Workload, t: str | None, allocs: list[Alloc], borrowed: bool
    ) -> None:
        if w.max_per_node is not None or w.app is not None or self.constraints.counts is not None:
            self.constraints.placed(w, allocs)  # else nothing counts its workers
        names = self.state.names
        if len(allocs) == 1:
            a = allocs[0]
            workers: tuple[WorkerPlacement, ...] = (
                WorkerPlacement(names[a.node], a.gpus, a.milli),
            )
        else:
            workers = tuple(WorkerPlacement(names[a.node], a.gpus, a.milli) for a in allocs)
        ledger = self.ledger
        if ledger is not None and t is not None:
            # a workload that starts on what is left of a guarantee may go above it
            project = w.project
            r = w.request
            share = (r.gpus * WHOLE if r.gpus else r.gpu_milli) * w.gang  # w.gpu_share
            key = (project, t)
            used = ledger.used.get(key, 0)
            if used + share > ledger.guaranteed.get(key, 0):  # not ledger.within
                borrowed = True
            ledger.used[key] = used + share  # ledger.add
            # Only the classes that may use type t (asking for it, or for any type) change.
            groups = ((project, t), (project, None))
            listed = self.class_cells
            if listed:
                for group in groups:
                    for cell in listed.pop(group, ()):
                        cell[0] = cell[1] = cell[2] = None  # its borrow cell is its own
            listed = self.borrow_cells
            if listed:
                for group in groups:
                    for cell in listed.pop(group, ()):
                        cell[0] = cell[1] = None
        self.places.append(Place(w.id, workers, t, borrowed))
        if self.fair is not None:
            self.fair.charge(w, t)

    def _no_fit_reason(self, w: Workload, types: Sequence[str | None]) -> str:
        key = (*shape(w, None), *types)
        cached = self.reasons.get(key)
        if cached is None:
            cached = self.reasons[key] = no_fit_reason(self.state, w, types)
        return cached

    def _recheck_at(self, when: float) -> None:
        if self.recheck is None or when < self.recheck:
            self.recheck = when


def shape(w: Workload, t: str | None) -> Shape:
    """What placing one of ``w``'s workers on type ``t`` depends on: its request, gang and,
    for constrained work, its placement rules (the key of the round's fit memos)."""
    r = w.request
    if w.node_selector or w.max_per_node is not None:  # constrained(w), inlined: a hot path
        return (t, r.gpus, r.gpu_milli, r.cpu_milli, r.memory_mib, w.gang, *rules(w))
    return (t, r.gpus, r.gpu_milli, r.cpu_milli, r.memory_mib, w.gang)


def rules(w: Workload) -> tuple[object, ...]:
    """``w``'s placement rules: the app its per-node limit counts, the limit, the selector."""
    return (app_of(w), w.max_per_node, w.node_selector)
