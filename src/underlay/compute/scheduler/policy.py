"""``decide``: one scheduling round, a pure function from a snapshot to decisions.

The round applies the rules in a fixed order, each one its own module:

1. **reject** (:mod:`.feasibility`): requests no node could ever satisfy;
2. **defer** (:mod:`.energy`): deferrable work outside a low-carbon window;
3. **order** (:mod:`.ordering`): FIFO, least attained service, or fair share between projects
   with priority classes and service levels inside a project;
4. **guaranteed pass**: each workload within its project's quota (:mod:`.quota`) is placed
   (:mod:`.packing`, health enforced by :mod:`.cluster`); if it does not fit it may preempt
   (:mod:`.preemption`), and otherwise it is the blocked head: ``strict`` stops the queue
   behind it, ``backfill`` reserves nodes for it so later work cannot delay it;
5. **borrowing pass**: work above its project's guarantee runs on capacity still idle after
   every guaranteed claim, and is marked borrowed (the first to be reclaimed later).

Before all of these, the **claims** of earlier preemptions (:class:`.Claim`) are honoured: a
preemption is made for one claimant, and the room it frees stays held for that claimant, on
the planned nodes, until the claimant starts there (first, before any other work) or the
claim is abandoned with a recorded reason. So a preemption never frees room for someone
else, and its claimant never plans a second one while it waits.

The round's working state and the steps these passes share (the reject check, placing and
recording a placement) are in :mod:`.round_state`.

No I/O, no globals, no clock but ``snapshot.clock``: the same input gives the same decisions,
which is what lets the simulator measure exactly what the live loop runs. Within a round,
"nothing of shape X fits" is remembered, because capacity only shrinks during a round, and
what decides a class of waiting work (its types within the guarantee, its verdict key, the
reason it waits) is worked out once per project until that project's next placement; these
memos are what keep a round over 10,000 pending workloads cheap.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from underlay.compute.scheduler.cluster import Alloc, ClusterState
from underlay.compute.scheduler.constraints import (
    constrained,
    keep_off_spot,
)
from underlay.compute.scheduler.decisions import Abandon, Decisions, Preempt, Reject, Wait
from underlay.compute.scheduler.energy import hold_reason
from underlay.compute.scheduler.ordering import fair_runs, in_order, serve_projects, service_level
from underlay.compute.scheduler.preemption import Plan
from underlay.compute.scheduler.reasons import names_text
from underlay.compute.scheduler.reservation import hold_for
from underlay.compute.scheduler.round_state import RoundState, Shape, rules, shape
from underlay.compute.scheduler.snapshot import WHOLE, Claim, Snapshot, Workload
from underlay.errors import InvalidInput


def decide(snapshot: Snapshot) -> Decisions:
    """Decide what to place, preempt, keep waiting (with a reason) or reject.

    Raises :class:`~underlay.errors.InvalidInput` if the snapshot itself is inconsistent
    (two nodes or two workloads with the same name); a bad *request* is rejected instead.
    """
    _check(snapshot)
    return _Round(keep_off_spot(snapshot)).run()


def _check(snapshot: Snapshot) -> None:
    names = [node.name for node in snapshot.nodes]
    if len(set(names)) != len(names):
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise InvalidInput(
                    f"node {name!r} appears twice in the snapshot; names must be unique"
                )
            seen.add(name)
    ids = [r.workload.id for r in snapshot.running] + [w.id for w in snapshot.pending]
    if len(set(ids)) != len(ids):
        known: set[str] = set()
        for wid in ids:
            if wid in known:
                raise InvalidInput(
                    f"workload {wid!r} appears twice in the snapshot (running or pending); "
                    "ids must be unique"
                )
            known.add(wid)


class _Round(RoundState):
    """The passes of one round over its :class:`.RoundState`."""

    def run(self) -> Decisions:
        candidates: list[Workload] = []
        windows = bool(self.cfg.low_carbon_windows)
        claimed = self._honour_claims()
        for w in self.snap.pending:
            if w.id in claimed:
                continue
            reason = self._reject(w)
            if reason is not None:
                self.rejects.append(Reject(w.id, reason))
                continue
            held = hold_reason(w, self.cfg, self.snap.clock) if windows else None
            if held is not None:
                self.waits.append(Wait(w.id, held[0]))
                self._recheck_at(held[1])
                continue
            candidates.append(w)
        if self.mix_later:
            self._mix_from_rejects()
        self._first_pass(candidates)
        # The borrowers came out of the first pass in queue order: no need to sort them again.
        if self.borrowers or self.borrow_queues:
            self._borrow_pass()
        if self.preemptor.blocked_until is not None:
            self._recheck_at(self.preemptor.blocked_until)
        return Decisions(
            tuple(self.places),
            tuple(self.preempts),
            tuple(self.waits),
            tuple(self.rejects),
            self.recheck,
            tuple(self.claims),
            tuple(self.abandoned),
        )

    # -- claims of earlier preemptions ---------------------------------------------------

    def _honour_claims(self) -> set[str]:
        """Hold or hand over the room of each claim; returns the claimants decided here."""
        if not self.snap.claims:
            return set()
        pending = {w.id: w for w in self.snap.pending}
        leaving = {r.workload.id for r in self.snap.running if r.draining_until is not None}
        ready: list[tuple[Claim, Workload]] = []
        waiting: list[tuple[Claim, Workload, list[str]]] = []
        seen: set[str] = set()
        for claim in sorted(self.snap.claims, key=lambda c: (c.since, c.workload_id)):
            w = pending.get(claim.workload_id)
            if w is None or w.id in seen:
                why = f"{claim.workload_id} is no longer waiting"
                self.abandoned.append(Abandon(claim.workload_id, claim.victims, why))
                continue
            seen.add(w.id)
            gone = [v for v in claim.victims if v in leaving]
            if gone:
                waiting.append((claim, w, gone))
            else:
                ready.append((claim, w))
        state = self.state
        for claim, _, _ in waiting:
            for name in claim.nodes:
                node = state.index.get(name)
                if node is not None:
                    state.reserve(node)
        decided: set[str] = set()
        for claim, w in ready:
            reason = self._start_claimant(claim, w)
            if reason is None:
                decided.add(w.id)
            else:
                self.abandoned.append(Abandon(w.id, claim.victims, reason))
                self.no_preempt.add(w.id)
        for claim, w, gone in waiting:
            self.claims.append(claim)
            decided.add(w.id)
            self.waits.append(
                Wait(
                    w.id,
                    f"waiting for {', '.join(gone)} to release their resources after "
                    f"preemption; the room is held for it on {names_text(list(claim.nodes))}",
                )
            )
        return decided

    def _start_claimant(self, claim: Claim, w: Workload) -> str | None:
        """Place a claimant whose victims are gone, on its nodes if it fits there; None if
        placed, else why its claim is abandoned."""
        t = claim.gpu_type
        borrowed = False
        ledger = self.ledger
        if ledger is not None and t is not None and not ledger.within(w.project, t, w.gpu_share):
            if not (w.preemptible and ledger.may_borrow(w.project, t, w.gpu_share)):
                quota = ledger.describe(w.project, t)
                return f"{quota}; it may no longer take the room held for it"
            borrowed = True
        state = self.state
        nodes = [n for name in claim.nodes if (n := state.index.get(name)) is not None]
        if constrained(w):
            # Its nodes were chosen within its selector and spread limit; both are checked
            # again against this round's state, on its nodes first, then anywhere.
            held = self.constraints.place_on(w, t, nodes)
            if held is not None:
                self._record_place(w, t, held, borrowed)
                return None
            if self._try_place(w, [t], borrowed):
                return None
            no_fit = self.constraints.reason(w, [t], self._no_fit_reason(w, [t]))
            return f"the room freed for it is gone: {no_fit}"
        allocs: list[Alloc] = []
        for _ in range(w.gang):
            alloc = next(
                (a for n in nodes if (a := state.alloc_on(n, w.request, t)) is not None), None
            )
            if alloc is None:
                break
            state.allocate(alloc)
            allocs.append(alloc)
        if len(allocs) == w.gang:
            self._record_place(w, t, allocs, borrowed)
            return None
        for a in reversed(allocs):
            state.release(a)
        if self._try_place(w, [t], borrowed):
            return None
        return f"the room freed for it is gone: {self._no_fit_reason(w, [t])}"

    def _first_pass(self, candidates: list[Workload]) -> None:
        """Admit ``candidates`` in policy order (see :meth:`_admit`)."""
        fair = self.fair
        runs: Iterable[deque[Workload]]
        if fair is None:
            runs = (deque(in_order(self.cfg, candidates, fair)),)
        else:
            runs = fair_runs(self.cfg, candidates, fair)
        memo, waits, admit = self.class_memo, self.waits, self._admit
        borrowers, queues = self.borrowers, self.borrow_queues
        levels = self.cfg.service_levels
        level0 = bisect_right(levels, 0.0)  # the level of work that has not run yet
        for queue in runs:
            charges = fair.charges if fair is not None else 0
            # With fair share a run is one project's queue: its borrowers go to one queue.
            borrowing: deque[Any] | None = None
            while queue:
                w = queue.popleft()
                if self.head is not None:
                    waits.append(Wait(w.id, self.head))
                    continue
                # What decides a workload's fate here (the types within its project's
                # guarantee and its verdict key) depends on its class and on its project's
                # usage, which only the project's own placements change: worked out once per
                # class until then. Its class: everything its admission depends on besides
                # its project's usage, with its project and the type it asks for first (the
                # group whose placements change it).
                r = w.request
                attained = w.attained_service
                key: Shape = (
                    w.project,
                    r.gpu_type,
                    r.gpus,
                    r.gpu_milli,
                    r.cpu_milli,
                    r.memory_mib,
                    w.gang,
                    w.preemptible,
                    w.priority,
                    bisect_right(levels, attained) if attained else level0,
                    w.displaced,
                )
                if w.node_selector or w.max_per_node is not None:
                    key = (*key, *rules(w))
                cell = memo.get(key)
                # Most of a deep queue waits for a reason its class already found, or
                # borrows on every type it may use: both inlined, the rest in _admit.
                if cell is not None:
                    if cell[2] is not None:
                        waits.append(Wait(w.id, cell[2]))
                        continue
                    if cell[3] is not None and cell[0] is not None and not cell[0]:
                        if fair is None:  # _queue_borrower, inlined
                            borrowers += (w, cell[3])
                        else:
                            if borrowing is None:
                                borrowing = queues.get(w.project)
                                if borrowing is None:
                                    borrowing = queues[w.project] = deque()
                            borrowing += (w, cell[3])
                        continue
                admit(w, key, cell)
                if fair is not None and fair.charges != charges:
                    break

    def _queue_borrower(self, w: Workload, borrow: list[Any]) -> None:
        if self.fair is None:
            self.borrowers += (w, borrow)
        else:
            queue = self.borrow_queues.get(w.project)
            if queue is None:
                queue = self.borrow_queues[w.project] = deque()
            queue += (w, borrow)

    def _admit(self, w: Workload, key: Shape, cell: list[Any] | None) -> None:
        """Place ``w`` within its project's guarantee, make room by preemption, queue it to
        borrow, or say why it waits; ``cell`` is its class's (None if not made yet)."""
        if cell is None:
            cell = self.class_memo[key] = [None, None, None, None]
        if cell[0] is None:
            self._admit_class(w, cell)
            # A project's usage only grows during a round, so a class that borrows on every
            # type it may use keeps borrowing: it outlives its project's placements (its cell
            # is not listed for them to clear).
            if cell[0] or cell[2] is not None:
                group = (w.project, w.request.gpu_type)
                cells = self.class_cells.get(group)
                if cells is None:
                    self.class_cells[group] = [cell]
                else:
                    cells.append(cell)
        inside, verdict, known, borrow = cell
        if known is None:
            if not inside:
                if borrow is None:
                    borrow = cell[3] = [None, None]
                self._queue_borrower(w, borrow)
                return
            # Capacity, victims and quota headroom only shrink during a round: a workload
            # just like one that already failed fails the same way, for the same reason.
            known = self.failed.get(verdict)
            if known is not None:
                cell[2] = known
        if known is not None:
            self.waits.append(Wait(w.id, known))
            return
        if self._try_place(w, inside, borrowed=False):
            return
        if self._try_preempt(w, inside, guaranteed=self.ledger is not None):
            return
        self._blocked(w, inside, verdict)

    def _admit_class(self, w: Workload, cell: list[Any]) -> None:
        """Fill ``cell`` with the types within the guarantee, the verdict key and the reason
        to wait if already known."""
        types = self._types(w)
        inside = types
        if self.ledger is not None and types[0] is not None:
            inside = self._guaranteed_types(w, types)
            if not inside:
                cell[0], cell[1] = inside, None
                if w.preemptible:
                    cell[2] = None
                else:
                    quota = self.ledger.describe(w.project, str(types[0]))
                    cell[2] = f"{quota}; not preemptible, so it may not borrow"
                return
        levels = self.cfg.service_levels
        level = bisect_right(levels, w.attained_service) if levels else 0
        cell[0] = inside
        cell[1] = (shape(w, inside[0]), len(inside), w.project, w.priority, level, w.displaced)
        cell[2] = None

    def _guaranteed_types(self, w: Workload, types: list[str | None]) -> list[str | None]:
        """The types on which ``w`` starts on its project's guarantee: it fits within it or,
        with ``guarantee_start`` and preemptible, its project still has some of it left (the
        part above the guarantee is then borrowed, and reclaimable). Monotone: as the
        project's usage grows a type can only leave this list."""
        ledger = self.ledger
        assert ledger is not None
        used_of, guaranteed_of, limit_of = ledger.used, ledger.guaranteed, ledger.limit
        project = w.project
        r = w.request
        share = (r.gpus * WHOLE if r.gpus else r.gpu_milli) * w.gang  # w.gpu_share
        start = self.cfg.guarantee_start and w.preemptible
        inside: list[str | None] = []
        for t in types:
            if t is None:
                continue
            key = (project, t)
            used = used_of.get(key, 0)
            guaranteed = guaranteed_of.get(key, 0)
            if used + share <= guaranteed:  # ledger.within
                inside.append(t)
            elif start and used < guaranteed:  # the project has some of its guarantee left
                limit = limit_of.get(key)
                if limit is None or used + share <= guaranteed + limit:  # ledger.may_borrow
                    inside.append(t)
        return inside

    def _borrow_pass(self) -> None:
        fair = self.fair
        if fair is None:
            borrowers = self.borrowers
            for i in range(0, len(borrowers), 2):
                self._borrow(borrowers[i], borrowers[i + 1])
            return
        # Most borrowers wait for a reason their class already found: that case is inlined.
        waits = self.waits
        for queue in serve_projects(self.borrow_queues, fair):
            charges = fair.charges
            while queue:
                w = queue.popleft()
                cell = queue.popleft()
                if cell[1] is not None:
                    waits.append(Wait(w.id, cell[1]))
                    continue
                self._borrow(w, cell)
                if fair.charges != charges:
                    break

    def _borrow(self, w: Workload, cell: list[Any]) -> None:
        ledger = self.ledger
        assert ledger is not None  # only the quota pass produces borrowers
        # As in the guaranteed pass, a workload just like one that failed to borrow fails too;
        # the project's usage is part of the key so the reason quotes the current figures.
        # The key changes only with the project's own placements: worked out once per class.
        if cell[0] is None:
            # only work asking for accelerators borrows: its types hold no None
            t0 = self._types(w)[0]
            assert t0 is not None
            levels = self.cfg.service_levels
            level = bisect_right(levels, w.attained_service) if levels else 0
            used = ledger.used.get((w.project, t0), 0)
            cell[0] = ("borrow", shape(w, t0), w.project, w.priority, level, used, w.displaced)
            cell[1] = None
            group = (w.project, w.request.gpu_type)
            cells = self.borrow_cells.get(group)
            if cells is None:
                self.borrow_cells[group] = [cell]
            else:
                cells.append(cell)
        verdict, known = cell
        if known is None:
            known = self.failed.get(verdict)
            if known is not None:
                cell[1] = known
        if known is not None:
            self.waits.append(Wait(w.id, known))
            return
        types = self._types(w)
        first = types[0]
        assert first is not None
        allowed = [
            t for t in types if t is not None and ledger.may_borrow(w.project, t, w.gpu_share)
        ]
        if allowed and self._try_place(w, list(allowed), borrowed=True):
            return
        if self._try_preempt(w, allowed, guaranteed=False):
            return
        # Written once per project, type and usage: thousands of borrowers quote a few.
        text_key = (w.project, first, ledger.used.get((w.project, first), 0))
        quota = self.quota_texts.get(text_key)
        if quota is None:
            quota = self.quota_texts[text_key] = ledger.describe(w.project, first)
        if not allowed:
            reason = f"{quota}; its borrow limit is reached"
        else:
            reason = f"{quota}; no idle {first} to borrow ({self._no_fit_reason(w, allowed)})"
        self.failed[verdict] = reason
        self.waits.append(Wait(w.id, reason))

    def _try_preempt(self, w: Workload, types: Sequence[str | None], guaranteed: bool) -> bool:
        if not self.preemptor.enabled or self.plans_left <= 0 or self.attempts_left <= 0:
            return False
        if w.id in self.no_preempt:
            return False
        rooms = self._rooms(w) if constrained(w) else None
        if rooms is not None and not rooms:
            return False  # no node it may run on: nothing to free
        level = service_level(w.attained_service, self.cfg.service_levels)
        for t in types:
            memo = (shape(w, t), w.project, w.priority, level, guaranteed, w.displaced)
            if memo in self.noplan or self.attempts_left <= 0:
                continue
            if t is not None and not _hostable(self.state, w, t):
                continue  # no node of this type could ever host a worker: nothing to free
            self.attempts_left -= 1
            plan = self.preemptor.plan(w, t, guaranteed, rooms)
            if plan is None:
                self.noplan.add(memo)
                continue
            self.plans_left -= 1
            self._apply_plan(w, plan, t)
            return True
        return False

    def _rooms(self, w: Workload) -> dict[int, int]:
        """For constrained ``w``: the nodes it may run on, and how many of its workers each
        may still take (selector and spread limit), leaving out those that may take none."""
        c = self.constraints
        rooms = {n: min(w.gang, c.room(w, n)) for n in c.allowed(w)}
        return {n: k for n, k in rooms.items() if k > 0}

    def _apply_plan(self, w: Workload, plan: Plan, t: str | None) -> None:
        for r, why in plan.victims:
            self.preempts.append(Preempt(r.workload.id, why, self.cfg.grace_s, w.id))
        for node in plan.nodes:
            self.state.reserve(node)
        waits_for = tuple(r.workload.id for r, _ in plan.victims)
        waits_for += tuple(r.workload.id for r in plan.draining)
        names = tuple(self.state.names[n] for n in plan.nodes)
        self.claims.append(Claim(w.id, waits_for, names, t, self.snap.clock))
        parts: list[str] = []
        if plan.victims:
            ids = ", ".join(r.workload.id for r, _ in plan.victims)
            parts.append(f"preempting {ids} to make room (grace period {self.cfg.grace_s:g} s)")
        if plan.draining:
            ids = ", ".join(r.workload.id for r in plan.draining)
            parts.append(f"waiting for {ids} to release their resources after preemption")
        self.waits.append(Wait(w.id, "; ".join(parts)))

    def _blocked(self, w: Workload, types: list[str | None], verdict: tuple[object, ...]) -> None:
        reason = self._no_fit_reason(w, types)
        if constrained(w):
            reason = self.constraints.reason(w, types, reason)
        if self.cfg.head == "strict":
            self.head = f"behind {w.id}, the blocked head of the queue (strict FIFO)"
            reason += "; it heads the queue and nothing may pass it (strict FIFO)"
        elif self.cfg.head == "backfill" and self.reservations_left > 0:
            rooms = self._rooms(w) if constrained(w) else None
            held = hold_for(self.state, w, types, rooms) if rooms is None or rooms else []
            if held:
                self.reservations_left -= 1
                self.held_for.append(w.id)
                reason += (
                    f"; first in line: holding what it needs on {names_text(held)} "
                    "so later work cannot delay it"
                )
        else:
            if self.held_for:
                reason += f" besides what is held for {', '.join(self.held_for)}"
            self.failed[verdict] = reason
        self.waits.append(Wait(w.id, reason))


def _hostable(state: ClusterState, w: Workload, t: str) -> bool:
    """Whether some node with ``t`` accelerators could host one worker of ``w`` when empty."""
    req = w.request
    return any(
        cls.accelerators.get(t, 0) >= max(1, req.gpus)
        and cls.cpu_milli >= req.cpu_milli
        and cls.memory_mib >= req.memory_mib
        for cls in state.host_classes()
    )
