"""The trace simulator: a virtual clock that replays jobs through the same ``decide``.

Each step jumps the clock to the next event (an arrival, a finish, the end of a preempted
workload's grace period, or the ``recheck_at`` the policy asked for), rounds it up to the next
scheduling tick (``interval_s``, default 60 s, the cycle of a Kueue- or Slurm-like loop; 0
decides at every event), applies every event up to the tick at its own time, builds a
:class:`~underlay.compute.scheduler.Snapshot`, calls
:func:`~underlay.compute.scheduler.decide` once and applies its decisions. The policy is
never told durations; only the simulator knows when a job will finish.

Preemption follows the live semantics: a preempted workload keeps running (and keeps its
resources) for its grace period, then stops and goes back to the queue with its attained
service and the work it has left, plus ``restart_overhead_s`` of lost work (checkpoint and
restart). Node objects are rebuilt only for nodes whose allocation changed, so a step costs
what ``decide`` costs plus work proportional to what changed.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from underlay.compute.scheduler import (
    WHOLE,
    Claim,
    Decisions,
    Demand,
    Node,
    PolicyConfig,
    Quota,
    Running,
    Snapshot,
    Workload,
    decide,
)
from underlay.compute.scheduler.energy import hold_reason
from underlay.compute.simulator.autoscaling import AutoscaleSpec, Fleet, slot_nodes
from underlay.compute.simulator.cluster import DEFAULT_POWER
from underlay.compute.simulator.metrics import Collector, Report, offered_load
from underlay.compute.simulator.trace import Trace, TraceJob

Shape = tuple[str | None, int, int, int, int]


@dataclass(frozen=True, slots=True)
class _Held:
    """Resources a running job holds on one node."""

    node: int
    gpus: tuple[int, ...]
    milli: int
    cpu_milli: int
    memory_mib: int


class Simulation:
    """One replay of ``trace`` on ``nodes`` with ``config``; call :meth:`run` once."""

    def __init__(
        self,
        trace: Trace,
        nodes: tuple[Node, ...],
        quotas: tuple[Quota, ...],
        config: PolicyConfig,
        *,
        cluster_name: str = "",
        seed: int = 0,
        restart_overhead_s: float = 60.0,
        interval_s: float = 60.0,
        progress: Callable[[int, int], None] | None = None,
        autoscale: AutoscaleSpec | None = None,
    ) -> None:
        self.trace = trace
        self.static_gpus = sum(len(n.accelerators) for n in nodes)
        if autoscale is not None:  # every slot of every group, off until launched
            nodes = (*nodes, *slot_nodes(autoscale))
        # Called with (jobs ended: finished or rejected, jobs in the trace) as each one ends.
        self.progress = progress
        self.interval_s = interval_s
        self.quotas = quotas
        self.config = config
        self.cluster_name = cluster_name
        self.seed = seed
        self.restart_overhead_s = restart_overhead_s
        self.nodes = list(nodes)
        self.index = {n.name: i for i, n in enumerate(nodes)}
        self.gpu_free = [[a.free_milli for a in n.accelerators] for n in nodes]
        self.cpu_free = [n.free_cpu_milli for n in nodes]
        self.mem_free = [n.free_memory_mib for n in nodes]
        self.dirty: set[int] = set()
        self.jobs: dict[str, TraceJob] = {j.workload.id: j for j in trace.jobs}
        self.pending: dict[str, Workload] = {}
        self.shapes: dict[Shape, int] = {}
        # The workload mix packing keeps room for: every request that has arrived so far.
        self.demand: dict[Shape, Demand] = {}
        self.demand_tuple: tuple[Demand, ...] | None = None
        self.running: dict[str, Running] = {}
        self.held: dict[str, list[_Held]] = {}
        self.remaining: dict[str, float] = {}
        self.first_start: dict[str, float] = {}
        self.version: dict[str, int] = {}
        self.events: list[tuple[float, int, int, str, int]] = []  # time, kind, seq, id, version
        # Room held for the claimants of earlier preemptions, handed back to the policy.
        self.claims: tuple[Claim, ...] = ()
        # What happened, for checks over whole replays: (clock, victim, claimant) for each
        # preemption, (clock, id) for each start, (clock, claimant, reason) per abandoned claim.
        self.preempt_log: list[tuple[float, str, str]] = []
        self.start_log: list[tuple[float, str]] = []
        self.abandon_log: list[tuple[float, str, str]] = []
        self.seq = 0
        self.clock = trace.jobs[0].workload.submit_time if trace.jobs else 0.0
        self.start = self.clock
        self._init_measures(nodes)
        self.fleet = Fleet(self, autoscale, seed) if autoscale is not None else None
        self.last_snapshot: Snapshot | None = None

    def _init_measures(self, nodes: tuple[Node, ...]) -> None:
        self.collector = Collector()
        self.preemptions = 0
        self.rejected = 0
        self.calls = 0
        self.decide_s = 0.0
        self.gpus = sum(len(f) for f in self.gpu_free)
        self.with_free = {n for n, frees in enumerate(self.gpu_free) if any(f > 0 for f in frees)}
        self.type_count: dict[str, int] = {}
        self.power: dict[str, tuple[float, float]] = {}
        for n in nodes:
            for a in n.accelerators:
                self.type_count[a.type] = self.type_count.get(a.type, 0) + 1
                pm = a.power or DEFAULT_POWER
                self.power.setdefault(a.type, (pm.idle_watts, pm.busy_watts))
        self.alloc_by_type: dict[str, float] = dict.fromkeys(self.type_count, 0.0)
        self.alloc_area: dict[str, float] = dict.fromkeys(self.type_count, 0.0)
        self.unusable = 0.0
        self.unusable_area = 0.0
        # Whether a node's free GPUs fit some waiting shape, for the current set of shapes;
        # dropped for a node when its allocation changes.
        self.usable: dict[int, bool] = {}
        self.usable_for: frozenset[Shape] = frozenset()
        self.unallocated_after_last = 0.0

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> Report:
        wall = time.perf_counter()
        jobs = self.trace.jobs
        i = 0
        recheck: float | None = None
        measured = False
        while True:
            nxt = self._next(i, recheck)
            if nxt is None:
                break
            tick = self._tick(nxt)
            # Events up to the tick happen at their own times (so accounting is exact); the
            # policy runs once, at the tick.
            while True:
                at = self._next(i, None)
                if at is None or at > tick:
                    break
                self._advance(at)
                self._fire_events(at)
                while i < len(jobs) and jobs[i].workload.submit_time <= at:
                    self._arrive(jobs[i])
                    i += 1
            self._advance(tick)
            decisions = self._decide()
            self._apply(decisions)
            if self.fleet is not None and self.last_snapshot is not None:
                self.fleet.step(self.last_snapshot, decisions)
                if self._fleet_done(i):
                    break
            recheck = decisions.recheck_at
            self._measure_fragmentation()
            if i == len(jobs) and not measured:
                self.unallocated_after_last = self._free_gpus()
                measured = True
        return self._report(time.perf_counter() - wall)

    def _fleet_done(self, i: int) -> bool:
        """With autoscaling, the replay ends when every job has ended, or when all have
        arrived and what is left runs to the end: the fleet's own events (spot losses of a
        group kept at its minimum) would otherwise go on forever."""
        if len(self.collector.jct) + self.rejected == len(self.trace.jobs):
            return True
        if i < len(self.trace.jobs) or self.pending:
            return False
        return not any(kind < 2 for _, kind, _, _, _ in self.events)

    def _next(self, i: int, recheck: float | None) -> float | None:
        """The time of the next arrival, finish, drain end or requested recheck."""
        best: float | None = None
        jobs = self.trace.jobs
        if i < len(jobs):
            best = jobs[i].workload.submit_time
        if self.events and (best is None or self.events[0][0] < best):
            best = self.events[0][0]
        if recheck is not None and recheck > self.clock and (best is None or recheck < best):
            best = recheck
        return None if best is None else max(best, self.clock)

    def _tick(self, when: float) -> float:
        step = self.interval_s
        return when if step <= 0 else math.ceil(when / step) * step

    def _advance(self, now: float) -> None:
        dt = now - self.clock
        if dt > 0:
            for t, share in self.alloc_by_type.items():
                self.alloc_area[t] += share * dt
            self.unusable_area += self.unusable * dt
        self.clock = now

    def _push(self, when: float, kind: int, wid: str) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, kind, self.seq, wid, self.version[wid]))

    def _fire_events(self, now: float) -> None:
        events = self.events
        while events and events[0][0] <= now:
            _, kind, _, wid, version = heapq.heappop(events)
            if kind >= 2 and self.fleet is not None:
                self.fleet.fire(kind, wid, version)
                continue
            if wid not in self.running or self.version[wid] != version:
                continue  # stale: the job finished or was restarted since
            if kind == 0:
                self._finish(wid)
            else:
                self._stop(wid)

    def push_fleet(self, when: float, kind: int, node: str, epoch: int) -> None:
        """Queue an event of the fleet (:mod:`.autoscaling`) for ``node``."""
        self.seq += 1
        heapq.heappush(self.events, (max(when, self.clock), kind, self.seq, node, epoch))

    def stop_node(self, node: str) -> None:
        """Node ``node`` is gone: what runs on it stops now and goes back to the queue."""
        n = self.index[node]
        for wid in [w for w, held in self.held.items() if any(h.node == n for h in held)]:
            self._stop(wid)

    def _queue(self, w: Workload) -> None:
        self.pending[w.id] = w
        r = w.request
        if r.gpu_share:
            key = (r.gpu_type, r.gpus, r.gpu_milli, r.cpu_milli, r.memory_mib)
            self.shapes[key] = self.shapes.get(key, 0) + 1

    def _dequeue(self, wid: str) -> Workload:
        w = self.pending.pop(wid)
        r = w.request
        if r.gpu_share:
            key = (r.gpu_type, r.gpus, r.gpu_milli, r.cpu_milli, r.memory_mib)
            left = self.shapes[key] - 1
            if left:
                self.shapes[key] = left
            else:
                del self.shapes[key]
        return w

    def _arrive(self, job: TraceJob) -> None:
        w = job.workload
        self._queue(w)
        r = w.request
        key = (r.gpu_type, r.gpus, r.gpu_milli, r.cpu_milli, r.memory_mib)
        seen = self.demand.get(key)
        self.demand[key] = Demand(r, (seen.count if seen else 0) + w.gang)
        self.demand_tuple = None
        self.remaining[w.id] = job.duration_s if job.duration_s is not None else -1.0
        self.version[w.id] = 0

    def _decide(self) -> Decisions:
        for n in self.dirty:
            self.nodes[n] = self._node(n)
        self.dirty.clear()
        if self.demand_tuple is None:
            self.demand_tuple = tuple(self.demand.values())
        snap = Snapshot(
            self.clock,
            tuple(self.nodes),
            tuple(self.running.values()),
            tuple(self.pending.values()),
            self.quotas,
            self.config,
            self.demand_tuple,
            self.claims,
        )
        self.last_snapshot = snap
        started = time.perf_counter()
        decisions = decide(snap)
        self.decide_s += time.perf_counter() - started
        self.calls += 1
        return decisions

    def _node(self, n: int) -> Node:
        old = self.nodes[n]
        frees = self.gpu_free[n]
        accs = tuple(
            a if a.free_milli == frees[g] else replace(a, free_milli=frees[g])
            for g, a in enumerate(old.accelerators)
        )
        return replace(
            old,
            free_cpu_milli=self.cpu_free[n],
            free_memory_mib=self.mem_free[n],
            accelerators=accs,
        )

    # -- applying decisions -------------------------------------------------------------

    def _apply(self, d: Decisions) -> None:
        self.claims = d.claims
        for a in d.abandoned:
            self.abandon_log.append((self.clock, a.workload_id, a.reason))
        for r in d.rejects:
            self._dequeue(r.workload_id)
            self.rejected += 1
            self._ended()
        for p in d.preempts:
            run = self.running[p.workload_id]
            self.running[p.workload_id] = replace(run, draining_until=self.clock + p.grace_s)
            self.preemptions += 1
            self.preempt_log.append((self.clock, p.workload_id, p.for_workload))
            claimant = self.pending.get(p.for_workload)
            if claimant is not None:
                displaced = (*claimant.displaced, p.workload_id)
                self.pending[p.for_workload] = replace(claimant, displaced=displaced)
            self._push(self.clock + p.grace_s, 1, p.workload_id)
        for place in d.places:
            w = self._dequeue(place.workload_id)
            held = []
            for worker in place.workers:
                n = self.index[worker.node]
                frees = self.gpu_free[n]
                for g in worker.gpus:
                    frees[g] -= worker.gpu_milli
                self.cpu_free[n] -= w.request.cpu_milli
                self.mem_free[n] -= w.request.memory_mib
                self._touch(n)
                held.append(
                    _Held(
                        n, worker.gpus, worker.gpu_milli, w.request.cpu_milli, w.request.memory_mib
                    )
                )
            self.held[w.id] = held
            if place.gpu_type is not None:
                self.alloc_by_type[place.gpu_type] += w.gpu_share
            self.running[w.id] = Running(w, place.workers, self.clock, place.gpu_type)
            self.version[w.id] += 1
            self.start_log.append((self.clock, w.id))
            if w.id not in self.first_start:
                self.first_start[w.id] = self.clock
                self.collector.started(w.submit_time, self.clock)
            left = self.remaining[w.id]
            if left >= 0:
                self._push(self.clock + left, 0, w.id)

    def _touch(self, n: int) -> None:
        """Note that node ``n``'s allocation changed."""
        self.dirty.add(n)
        self.usable.pop(n, None)
        if any(f > 0 for f in self.gpu_free[n]):
            self.with_free.add(n)
        else:
            self.with_free.discard(n)

    def _release(self, wid: str) -> Running:
        run = self.running.pop(wid)
        for h in self.held.pop(wid):
            frees = self.gpu_free[h.node]
            for g in h.gpus:
                frees[g] += h.milli
            self.cpu_free[h.node] += h.cpu_milli
            self.mem_free[h.node] += h.memory_mib
            self._touch(h.node)
        if run.gpu_type is not None:
            self.alloc_by_type[run.gpu_type] -= run.workload.gpu_share
        return run

    def _finish(self, wid: str) -> None:
        run = self._release(wid)
        w = run.workload
        duration = self.jobs[wid].duration_s or 0.0
        self.collector.finished(w.project, w.submit_time, self.clock, duration)
        self._ended()

    def _ended(self) -> None:
        if self.progress is not None:
            self.progress(len(self.collector.jct) + self.rejected, len(self.trace.jobs))

    def _stop(self, wid: str) -> None:
        run = self._release(wid)
        ran = self.clock - run.started_at
        self.remaining[wid] = max(0.0, self.remaining[wid] - ran) + self.restart_overhead_s
        if self.jobs[wid].duration_s is None:
            self.remaining[wid] = -1.0
        attained = run.attained(self.clock)
        self._queue(replace(run.workload, attained_service=attained))

    # -- measures ---------------------------------------------------------------------------

    def _free_gpus(self) -> float:
        return sum(f for frees in self.gpu_free for f in frees if f > 0) / WHOLE

    def _measure_fragmentation(self) -> None:
        shapes: Iterable[Shape] = self.shapes
        if self.config.low_carbon_windows:  # held deferrable work is not waiting for room
            shapes = {
                (r.gpu_type, r.gpus, r.gpu_milli, r.cpu_milli, r.memory_mib)
                for w in self.pending.values()
                if (r := w.request).gpu_share and not hold_reason(w, self.config, self.clock)
            }
        if not shapes:
            self.unusable = 0.0
            return
        waiting = frozenset(shapes)
        if waiting != self.usable_for:
            self.usable_for = waiting
            self.usable.clear()
        unusable = 0
        for n in self.with_free:
            usable = self.usable.get(n)
            if usable is None:
                usable = self.usable[n] = any(self._fits(n, s) for s in waiting)
            if not usable:
                unusable += sum(f for f in self.gpu_free[n] if f > 0)
        self.unusable = unusable / WHOLE / max(1, self.gpus)

    def _fits(self, n: int, shape: Shape) -> bool:
        gpu_type, gpus, milli, cpu, mem = shape
        if self.cpu_free[n] < cpu or self.mem_free[n] < mem:
            return False
        accs = self.nodes[n].accelerators
        frees = self.gpu_free[n]
        ok = [f for g, f in enumerate(frees) if gpu_type in (None, accs[g].type)]
        if gpus:
            return sum(1 for f in ok if f == WHOLE) >= gpus
        return any(f >= milli for f in ok)

    def _report(self, wall_s: float) -> Report:
        makespan = self.clock - self.start
        summary = self.collector.summary()
        capacity = self.gpus * WHOLE * makespan
        util = sum(self.alloc_area.values()) / capacity if capacity else 0.0
        offered, weekly = offered_load(self.trace.jobs, self.gpus)
        joules = 0.0
        for t, count in self.type_count.items():
            idle, busy = self.power[t]
            joules += idle * count * makespan + (busy - idle) * self.alloc_area[t] / WHOLE
        return Report(
            trace=self.trace.name,
            cluster=self.cluster_name,
            policy=self.config.name,
            seed=self.seed,
            jobs=len(self.trace.jobs),
            finished=len(self.collector.jct),
            rejected=self.rejected,
            unfinished=len(self.trace.jobs) - len(self.collector.jct) - self.rejected,
            avg_jct_s=summary["avg_jct_s"],
            median_jct_s=summary["median_jct_s"],
            p95_jct_s=summary["p95_jct_s"],
            avg_queue_s=summary["avg_queue_s"],
            makespan_s=makespan,
            gpu_utilization=util,
            fragmentation=self.unusable_area / makespan if makespan else self.unusable,
            unallocated_gpus=self.unallocated_after_last,
            jain_fairness=summary["jain_fairness"],
            preemptions=self.preemptions,
            energy_kwh=joules / 3.6e6,
            gpus=self.gpus,
            skipped_rows=self.trace.skipped_count,
            decide_calls=self.calls,
            decide_ms_avg=1000 * self.decide_s / self.calls if self.calls else 0.0,
            wall_s=wall_s,
            skipped=self.trace.skipped,
            offered_load=offered,
            offered_load_weekly=weekly,
            autoscale=None
            if self.fleet is None
            else self.fleet.report(
                self.clock,
                sum(self.alloc_area.values()) / WHOLE,
                self.static_gpus * makespan,
            ).as_dict(),
        )
