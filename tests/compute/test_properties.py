"""Property tests: invariants of ``decide`` over random snapshots."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from underlay.compute.scheduler import (
    POLICIES,
    Accelerator,
    Decisions,
    Node,
    PowerModel,
    Quota,
    Request,
    Running,
    Snapshot,
    Window,
    WorkerPlacement,
    Workload,
    decide,
)
from underlay.compute.scheduler.codec import decisions_from_json, snapshot_from_json, to_json
from underlay.compute.scheduler.fragmentation import FragModel
from underlay.compute.scheduler.ordering import fair_runs, in_order, service_level
from underlay.compute.scheduler.quota import FairShare, running_counts
from underlay.compute.scheduler.round_state import RoundState
from underlay.compute.simulator import Simulation, Trace, TraceJob
from underlay.compute.simulator.cluster import parse_spec, quotas_from_weights

TYPES = ["A100", "T4"]
POWER = {"A100": PowerModel(50.0, 400.0), "T4": PowerModel(10.0, 70.0)}


@st.composite
def clusters(draw: st.DrawFn) -> tuple[tuple[Node, ...], tuple[Running, ...]]:
    """Nodes with random accelerators and health, and running work placed on them."""
    nodes: list[dict] = []
    for i in range(draw(st.integers(1, 5))):
        n_gpus = draw(st.sampled_from([0, 1, 2, 4, 8]))
        nodes.append(
            {
                "name": f"n{i}",
                "type": draw(st.sampled_from(TYPES)),
                "free": [1000] * n_gpus,
                "ok": [draw(st.booleans()) or draw(st.booleans()) for _ in range(n_gpus)],
                "healthy": draw(st.integers(0, 5)) > 0,
                "cpu": 32000,
                "mem": 65536,
            }
        )
    running: list[Running] = []
    for j in range(draw(st.integers(0, 8))):
        nd = nodes[draw(st.integers(0, len(nodes) - 1))]
        if not nd["free"]:
            continue
        whole = draw(st.booleans())
        if whole:
            want = draw(st.integers(1, len(nd["free"])))
            idle = [g for g, f in enumerate(nd["free"]) if f == 1000][:want]
            if len(idle) < want:
                continue
            for g in idle:
                nd["free"][g] = 0
            req = Request(1000 * want, 1024, gpus=want)
            workers = (WorkerPlacement(nd["name"], tuple(idle), 1000),)
        else:
            milli = draw(st.sampled_from([100, 250, 500, 700]))
            fits = [g for g, f in enumerate(nd["free"]) if f >= milli]
            if not fits:
                continue
            nd["free"][fits[0]] -= milli
            req = Request(500, 512, gpu_milli=milli)
            workers = (WorkerPlacement(nd["name"], (fits[0],), milli),)
        nd["cpu"] -= req.cpu_milli
        nd["mem"] -= req.memory_mib
        project = draw(st.sampled_from(["p0", "p1", "p2"]))
        w = Workload(
            f"r{j}",
            project,
            req,
            priority=draw(st.integers(0, 2)),
            attained_service=float(draw(st.sampled_from([0, 0, 5000, 50000]))),
            preemptible=draw(st.integers(0, 4)) > 0,
        )
        # not draining, a grace period that ended, or one still running (in the future)
        drain = draw(st.sampled_from([None, None, None, 50.0, 130.0]))
        running.append(Running(w, workers, float(draw(st.integers(0, 90))), nd["type"], drain))
    powered = draw(st.booleans())
    built = tuple(
        Node(
            nd["name"],
            32000,
            65536,
            nd["cpu"],
            nd["mem"],
            tuple(
                Accelerator(nd["type"], 16384, f, ok, POWER[nd["type"]] if powered else None)
                for f, ok in zip(nd["free"], nd["ok"], strict=True)
            ),
            nd["healthy"],
        )
        for nd in nodes
    )
    return built, tuple(running)


@st.composite
def workloads(draw: st.DrawFn, prefix: str = "w") -> tuple[Workload, ...]:
    out = []
    for i in range(draw(st.integers(0, 12))):
        whole = draw(st.integers(0, 3))
        gpus = draw(st.integers(0, 10)) if whole else 0
        milli = 0 if whole else draw(st.sampled_from([0, 100, 300, 500, 1000, 1200]))
        req = Request(
            draw(st.sampled_from([0, 1000, 4000, 40000])),
            draw(st.sampled_from([0, 1024, 100000])),
            gpus,
            milli,
            draw(st.sampled_from([None, None, "A100", "T4", "H100"])),
        )
        gang = draw(st.sampled_from([1, 1, 1, 2, 3]))
        if draw(st.integers(0, 9)) == 0:  # a malformed request: must be rejected, not crash
            req, gang = draw(MALFORMED)
        out.append(
            Workload(
                f"{prefix}{i}",
                draw(st.sampled_from(["p0", "p1", "p2"])),
                req,
                gang=gang,
                priority=draw(st.integers(0, 2)),
                deferrable=draw(st.integers(0, 3)) == 0,
                submit_time=float(draw(st.integers(0, 100))),
                attained_service=float(draw(st.sampled_from([0, 0, 5000, 50000]))),
                preemptible=draw(st.integers(0, 4)) > 0,
            )
        )
    return tuple(out)


MALFORMED = st.sampled_from(
    [
        (Request(gpus=-1), 1),
        (Request(gpu_milli=1500), 1),
        (Request(gpus=1, gpu_milli=500), 1),
        (Request(gpus=1), 0),
        (Request(cpu_milli=-1000), 1),
        (Request(gpus=2, gpu_type=""), 1),
    ]
)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    nodes, running = draw(clusters())
    quotas = tuple(
        Quota(p, t, draw(st.integers(0, 8)), draw(st.sampled_from([None, 0, 2])))
        for p in ("p0", "p1", "p2")
        for t in TYPES
        if draw(st.booleans())
    )
    config = replace(
        POLICIES[draw(st.sampled_from(sorted(POLICIES)))],
        energy_aware=draw(st.booleans()),
        low_carbon_windows=draw(
            st.sampled_from([(), (), (Window(0.0, 3600.0),), (Window(7200.0, 10800.0),)])
        ),
        max_defer_s=draw(st.sampled_from([0.0, 60.0, 86400.0])),
        min_runtime_s=float(draw(st.sampled_from([0, 60, 600]))),
    )
    return Snapshot(100.0, nodes, running, draw(workloads()), quotas, config)


@st.composite
def contended(draw: st.DrawFn) -> Snapshot:
    """A full cluster and a queue that wants in: the snapshots where preemption happens.

    Every GPU is held by running work of random projects, classes, progress and start times
    (some of it not preemptible, some already draining); the policy is one that preempts
    (``default`` or ``las``) with a random minimum run time and quotas."""
    nodes, running = [], []
    for i in range(draw(st.integers(1, 3))):
        name, g = f"n{i}", 0
        while g < 4:
            width = min(draw(st.sampled_from([1, 1, 2, 4])), 4 - g)
            w = Workload(
                f"r{i}-{g}",
                draw(st.sampled_from(["p0", "p1", "p2"])),
                Request(1000, 1024, gpus=width),
                priority=draw(st.integers(0, 2)),
                attained_service=float(draw(st.sampled_from([0, 3000, 5000, 50000]))),
                preemptible=draw(st.integers(0, 5)) > 0,
            )
            started = float(draw(st.sampled_from([0, 500, 900, 990])))
            drain = draw(st.sampled_from([None, None, None, None, 1010.0]))
            workers = (WorkerPlacement(name, tuple(range(g, g + width)), 1000),)
            running.append(Running(w, workers, started, "A100", drain))
            g += width
        used = sum(r.workload.request.cpu_milli for r in running if r.workers[0].node == name)
        mem = sum(r.workload.request.memory_mib for r in running if r.workers[0].node == name)
        accs = tuple(Accelerator("A100", 16384, 0) for _ in range(4))
        nodes.append(Node(name, 32000, 65536, 32000 - used, 65536 - mem, accs))
    pending = tuple(
        Workload(
            f"w{j}",
            draw(st.sampled_from(["p0", "p1", "p2"])),
            Request(1000, 1024, gpus=draw(st.sampled_from([1, 1, 2, 4]))),
            priority=draw(st.integers(0, 3)),
            submit_time=float(j),
            attained_service=float(draw(st.sampled_from([0, 0, 5000]))),
            preemptible=draw(st.integers(0, 4)) > 0,
        )
        for j in range(draw(st.integers(1, 4)))
    )
    quotas = tuple(
        Quota(p, "A100", draw(st.integers(0, 6)), draw(st.sampled_from([None, 0, 2])))
        for p in ("p0", "p1", "p2")
        if draw(st.booleans())
    )
    config = replace(
        POLICIES[draw(st.sampled_from(["default", "las"]))],
        min_runtime_s=float(draw(st.sampled_from([0, 60, 600]))),
        grace_s=float(draw(st.sampled_from([0, 30]))),
    )
    return Snapshot(1000.0, tuple(nodes), tuple(running), pending, quotas, config)


def _guarantee(snap: Snapshot) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = defaultdict(int)
    for q in snap.quotas:
        out[(q.project, q.accelerator_type)] += q.guaranteed * 1000
    return out


COMMON = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@COMMON
@given(snapshots())
def test_every_pending_workload_gets_one_decision_with_a_reason(snap: Snapshot) -> None:
    d = decide(snap)
    ids = [p.workload_id for p in d.places]
    ids += [w.workload_id for w in d.waits] + [r.workload_id for r in d.rejects]
    assert sorted(ids) == sorted(w.id for w in snap.pending)
    assert all(w.reason.strip() for w in d.waits)
    assert all(r.reason.strip() for r in d.rejects)


@COMMON
@given(snapshots())
def test_the_same_snapshot_gives_the_same_decisions(snap: Snapshot) -> None:
    assert decide(snap) == decide(snap)


@COMMON
@given(snapshots())
def test_no_share_over_capacity_no_unhealthy_choice_and_no_partial_gang(snap: Snapshot) -> None:
    d = decide(snap)
    nodes = {n.name: n for n in snap.nodes}
    pending = {w.id: w for w in snap.pending}
    used: dict[tuple[str, int], int] = defaultdict(int)
    cpu: dict[str, int] = defaultdict(int)
    mem: dict[str, int] = defaultdict(int)
    for place in d.places:
        w = pending[place.workload_id]
        assert len(place.workers) == w.gang
        for worker in place.workers:
            node = nodes[worker.node]
            assert node.healthy
            cpu[node.name] += w.request.cpu_milli
            mem[node.name] += w.request.memory_mib
            if w.request.gpus:
                assert len(set(worker.gpus)) == w.request.gpus and worker.gpu_milli == 1000
            elif w.request.gpu_milli:
                assert len(worker.gpus) == 1 and worker.gpu_milli == w.request.gpu_milli
            else:
                assert worker.gpus == ()
            for g in worker.gpus:
                acc = node.accelerators[g]
                assert acc.healthy
                assert acc.type == place.gpu_type
                assert w.request.gpu_type in (None, acc.type)
                used[(node.name, g)] += worker.gpu_milli
    for (name, g), share in used.items():
        assert share <= nodes[name].accelerators[g].free_milli
    for name in cpu:
        assert cpu[name] <= nodes[name].free_cpu_milli
        assert mem[name] <= nodes[name].free_memory_mib


@COMMON
@given(snapshots())
def test_no_project_goes_above_its_quota_unless_it_borrows(snap: Snapshot) -> None:
    d = decide(snap)
    if not (snap.config.quotas and snap.quotas):
        assert not any(p.borrowed for p in d.places)
        return
    guarantee = _guarantee(snap)
    limits = {(q.project, q.accelerator_type): q.borrow_limit for q in snap.quotas}
    usage: dict[tuple[str, str], int] = defaultdict(int)
    for r in snap.running:
        if r.gpu_type:
            usage[(r.workload.project, r.gpu_type)] += r.workload.gpu_share
    pending = {w.id: w for w in snap.pending}
    for place in d.places:
        w = pending[place.workload_id]
        if place.gpu_type is None:
            continue
        key = (w.project, place.gpu_type)
        usage[key] += w.gpu_share
        if not place.borrowed:
            assert usage[key] <= guarantee[key]
        elif limits.get(key) is not None:
            assert usage[key] <= guarantee[key] + 1000 * limits[key]


@COMMON
@given(snapshots())
def test_preemption_only_stops_running_work_that_is_not_already_leaving(snap: Snapshot) -> None:
    d = decide(snap)
    running = {r.workload.id: r for r in snap.running}
    victims = [p.workload_id for p in d.preempts]
    assert len(victims) == len(set(victims))
    waiting = {w.workload_id for w in d.waits}
    for p in d.preempts:
        assert running[p.workload_id].draining_until is None
        assert p.for_workload in waiting
        assert p.reason


def _usage(snap: Snapshot) -> dict[tuple[str, str], int]:
    """Accelerator thousandths each project holds per type (work still draining included)."""
    out: dict[tuple[str, str], int] = defaultdict(int)
    for r in snap.running:
        if r.gpu_type:
            out[(r.workload.project, r.gpu_type)] += r.workload.gpu_share
    return out


def _legitimate(snap: Snapshot, victim: Running, claimant: Workload, reason: str) -> str:
    """The rule that allows ``victim`` to be stopped for ``claimant`` (fails if none does)."""
    cfg, v, clock = snap.config, victim.workload, snap.clock
    key = (v.project, str(victim.gpu_type))
    held = sum(
        r.workload.gpu_share
        for r in snap.running
        if (r.workload.project, r.gpu_type) == key and r.draining_until is None
    )
    borrows = bool(snap.quotas) and cfg.quotas and held > _guarantee(snap)[key]
    if reason.startswith(f"project {claimant.project} claims back its guaranteed"):
        assert cfg.reclaim and cfg.quotas and v.project != claimant.project, reason
        assert borrows, f"{v.id} does not borrow: {reason}"
        return "reclaim"
    # priority and service-level victims must have run the minimum run time
    assert clock - victim.started_at >= cfg.min_runtime_s, reason
    if re.search(r"has priority class \d+, above", reason):
        assert cfg.priority_preemption and v.project == claimant.project, reason
        assert v.priority < claimant.priority, reason
        return "priority"
    assert "accelerator-hours (service level" in reason, reason
    assert cfg.las_preemption and cfg.service_levels, reason
    # inside the project; or cluster-wide; or, with las_borrowed, work another project
    # runs above its guarantee
    assert (
        cfg.las_scope == "cluster"
        or v.project == claimant.project
        or (cfg.las_borrowed and borrows)
    ), reason
    assert v.priority <= claimant.priority, reason
    levels = cfg.service_levels
    mine = service_level(claimant.attained_service, levels)
    assert service_level(victim.attained(clock), levels) > mine, reason
    return "service level"


@COMMON
@given(st.one_of(snapshots(), contended()))
def test_every_victim_is_legitimate(snap: Snapshot) -> None:
    """Each victim is preemptible, not leaving already, and chosen by a rule that is switched
    on and holds: reclaim of borrowed capacity, a higher priority class, or a higher service
    level, the last two only after the minimum run time."""
    d = decide(snap)
    running = {r.workload.id: r for r in snap.running}
    pending = {w.id: w for w in snap.pending}
    for p in d.preempts:
        victim = running[p.workload_id]
        assert victim.workload.preemptible, p
        assert victim.draining_until is None, p
        assert p.grace_s == snap.config.grace_s
        _legitimate(snap, victim, pending[p.for_workload], p.reason)


@COMMON
@given(st.one_of(snapshots(), contended()))
def test_borrowed_means_the_project_is_above_its_guarantee(snap: Snapshot) -> None:
    d = decide(snap)
    pending = {w.id: w for w in snap.pending}
    usage = _usage(snap)
    for place in d.places:
        if place.gpu_type is not None:
            usage[(pending[place.workload_id].project, place.gpu_type)] += pending[
                place.workload_id
            ].gpu_share
    guarantee = _guarantee(snap)
    for place in d.places:
        w = pending[place.workload_id]
        if place.borrowed:
            assert w.preemptible, place
            assert place.gpu_type is not None
            assert usage[(w.project, place.gpu_type)] > guarantee[(w.project, place.gpu_type)]


def _candidates(snap: Snapshot, d: Decisions) -> list[Workload]:
    """Pending work the round considered (not rejected, not held for a low-carbon window), in
    FIFO order."""
    rejected = {r.workload_id for r in d.rejects}
    held = {w.workload_id for w in d.waits if w.reason.startswith("deferrable: held")}
    queue = [w for w in snap.pending if w.id not in rejected | held]
    return sorted(queue, key=lambda w: (w.submit_time, w.id))


@COMMON
@given(snapshots())
def test_strict_fifo_places_only_a_prefix_of_the_queue(snap: Snapshot) -> None:
    snap = replace(snap, config=replace(POLICIES["fifo"], energy_aware=snap.config.energy_aware))
    d = decide(snap)
    placed = {p.workload_id for p in d.places}
    queue = [w.id for w in _candidates(snap, d)]
    assert placed == set(queue[: len(placed)]), (queue, placed)
    assert not d.preempts


def _fits_after_running_work(snap: Snapshot, head: Workload, placed: list[tuple]) -> bool:
    """Whether ``head`` could start once the running work ended, with ``placed`` (this
    round's placements: workload and its workers) still there."""
    taken: dict[tuple[str, int], int] = defaultdict(int)
    cpu: dict[str, int] = defaultdict(int)
    mem: dict[str, int] = defaultdict(int)
    for w, workers in placed:
        for worker in workers:
            cpu[worker.node] += w.request.cpu_milli
            mem[worker.node] += w.request.memory_mib
            for g in worker.gpus:
                taken[(worker.node, g)] += worker.gpu_milli
    nodes = tuple(
        Node(
            n.name,
            n.cpu_milli,
            n.memory_mib,
            n.cpu_milli - cpu[n.name],
            n.memory_mib - mem[n.name],
            tuple(
                replace(a, free_milli=1000 - taken[(n.name, g)])
                for g, a in enumerate(n.accelerators)
            ),
            n.healthy,
        )
        for n in snap.nodes
    )
    alone = decide(Snapshot(snap.clock, nodes, pending=(head,), config=POLICIES["first-fit"]))
    return bool(alone.places)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots())
def test_backfill_never_delays_the_head(snap: Snapshot) -> None:
    """Work placed behind a blocked head never takes what the head needs: if the head could
    start once the running work ends with only the work ahead of it placed, it still can
    with the backfilled work placed too."""
    snap = replace(snap, config=POLICIES["fifo-backfill"])
    d = decide(snap)
    heads = [w for w in d.waits if "first in line: holding what it needs" in w.reason]
    if not heads:
        return
    queue = _candidates(snap, d)
    position = {w.id: i for i, w in enumerate(queue)}
    head = next(w for w in queue if w.id == heads[0].workload_id)
    pending = {w.id: w for w in snap.pending}
    ahead = [
        (pending[p.workload_id], p.workers)
        for p in d.places
        if position[p.workload_id] < position[head.id]
    ]
    behind = [
        (pending[p.workload_id], p.workers)
        for p in d.places
        if position[p.workload_id] > position[head.id]
    ]
    if _fits_after_running_work(snap, head, ahead):
        assert _fits_after_running_work(snap, head, ahead + behind), (head, behind)


@COMMON
@given(snapshots())
def test_reject_exactly_when_an_empty_healthy_cluster_could_not_run_it(snap: Snapshot) -> None:
    d = decide(snap)
    rejected = {r.workload_id for r in d.rejects}
    empty = tuple(
        Node.idle(
            n.name,
            n.cpu_milli,
            n.memory_mib,
            tuple(Accelerator(a.type, a.memory_mib) for a in n.accelerators),
        )
        for n in snap.nodes
    )
    for w in snap.pending:
        alone = decide(Snapshot(0.0, empty, pending=(w,), config=POLICIES["first-fit"]))
        assert bool(alone.places) == (w.id not in rejected)


@COMMON
@given(snapshots())
def test_snapshots_and_decisions_survive_a_json_round_trip(snap: Snapshot) -> None:
    text = to_json(snap)
    assert snapshot_from_json(text) == snap
    d = decide(snap)
    assert decisions_from_json(to_json(d)) == d
    assert decide(snapshot_from_json(text)) == d


# -- sequences of submit / finish / cancel --------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("submit"),
            st.sampled_from(["p0", "p1"]),
            st.sampled_from([(1, 0), (2, 0), (4, 0), (0, 250), (0, 500), (8, 0)]),
            st.sampled_from([1, 1, 2]),
            st.integers(0, 2),
        ),
        st.tuples(st.just("finish"), st.integers(0, 50)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
    ),
    max_size=30,
)


class _Cluster:
    """Test-side bookkeeping: applies decisions the way a caller of ``decide`` must."""

    def __init__(self, grace_s: float = 0.0) -> None:
        self.free = {f"n{i}": [1000] * 4 for i in range(3)}
        self.running: dict[str, Running] = {}
        self.pending: dict[str, Workload] = {}
        self.clock = 0.0
        self.grace_s = grace_s

    def end_graces(self) -> None:
        """Victims whose grace period is over have left: back in the queue."""
        for wid, run in sorted(self.running.items()):
            if run.draining_until is not None and run.draining_until <= self.clock:
                self.pending[wid] = self.release(wid)

    def snapshot(self, config_name: str) -> Snapshot:
        nodes = tuple(
            Node(n, 64000, 65536, 64000, 65536, tuple(Accelerator("A100", 16384, f) for f in fs))
            for n, fs in self.free.items()
        )
        quotas = (Quota("p0", "A100", 6), Quota("p1", "A100", 6))
        return Snapshot(
            self.clock,
            nodes,
            tuple(self.running.values()),
            tuple(self.pending.values()),
            quotas,
            replace(POLICIES[config_name], grace_s=self.grace_s),
        )

    def release(self, wid: str) -> Workload:
        run = self.running.pop(wid)
        for worker in run.workers:
            for g in worker.gpus:
                self.free[worker.node][g] += worker.gpu_milli
        return run.workload

    def apply(self, snap: Snapshot) -> None:
        d = decide(snap)
        assert d == decide(snap)
        decided = [p.workload_id for p in d.places]
        decided += [w.workload_id for w in d.waits] + [r.workload_id for r in d.rejects]
        assert sorted(decided) == sorted(self.pending)
        for r in d.rejects:
            del self.pending[r.workload_id]
        for p in d.preempts:
            victim = self.running[p.workload_id]
            assert victim.draining_until is None  # never told to stop twice
            assert p.grace_s == self.grace_s
            if not p.grace_s:  # no grace period: the victim leaves at once
                self.pending[p.workload_id] = self.release(p.workload_id)
            else:  # it keeps its resources until its grace period ends
                self.running[p.workload_id] = replace(victim, draining_until=self.clock + p.grace_s)
        used: dict[str, int] = defaultdict(int)
        for r in self.running.values():
            used[r.workload.project] += r.workload.gpu_share
        for place in d.places:
            w = self.pending.pop(place.workload_id)
            assert len(place.workers) == w.gang
            used[w.project] += w.gpu_share
            if snap.config.quotas and not place.borrowed:
                assert used[w.project] <= 6000  # within its guarantee unless borrowing
            for worker in place.workers:
                for g in worker.gpus:
                    self.free[worker.node][g] -= worker.gpu_milli
                    assert self.free[worker.node][g] >= 0
            self.running[w.id] = Running(w, place.workers, self.clock, place.gpu_type)
        for frees in self.free.values():
            assert all(0 <= f <= 1000 for f in frees)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.sampled_from(sorted(POLICIES)), st.sampled_from([0.0, 30.0, 90.0]))
def test_random_submit_finish_cancel_sequences_keep_every_invariant(
    ops, config_name, grace_s
) -> None:
    cluster = _Cluster(grace_s)
    for n, op in enumerate(ops):
        cluster.clock += 60.0
        cluster.end_graces()
        if op[0] == "submit":
            _, project, (gpus, milli), gang, priority = op
            w = Workload(
                f"w{n}",
                project,
                Request(1000, 1024, gpus, milli),
                gang,
                priority,
                submit_time=cluster.clock,
            )
            cluster.pending[w.id] = w
        elif op[0] == "finish" and cluster.running:
            cluster.release(sorted(cluster.running)[op[1] % len(cluster.running)])
        elif op[0] == "cancel" and (cluster.pending or cluster.running):
            ids = sorted(cluster.pending) + sorted(cluster.running)
            wid = ids[op[1] % len(ids)]
            if wid in cluster.pending:
                del cluster.pending[wid]
            else:
                cluster.release(wid)
        cluster.apply(cluster.snapshot(config_name))


# -- preemption: bounded by what is borrowed, and always for a claimant that starts ---------


def _borrowed(snap: Snapshot) -> dict[tuple[str, str], int]:
    """What each (project, type) runs above its guarantee, not counting work already leaving."""
    held: dict[tuple[str, str], int] = defaultdict(int)
    for r in snap.running:
        if r.gpu_type and r.draining_until is None:
            held[(r.workload.project, r.gpu_type)] += r.workload.gpu_share
    guarantee = _guarantee(snap)
    return {key: max(0, amount - guarantee[key]) for key, amount in held.items()}


@st.composite
def crowded(draw: st.DrawFn) -> Snapshot:
    """Two 8-GPU nodes crowded with small jobs of p1 (some on p1's guarantee, some borrowed)
    and p0 claiming its guarantee: where reclaim is tempted to take too much."""
    runs: list[Running] = []
    frees: dict[str, list[int]] = {"n0": [1000] * 8, "n1": [1000] * 8}
    for name, free in frees.items():
        for g in range(draw(st.integers(2, 8))):
            w = Workload(f"r{len(runs)}", "p1", Request(0, 0, gpus=1))
            started = float(draw(st.integers(0, 90)))
            runs.append(Running(w, (WorkerPlacement(name, (g,)),), started, "A100"))
            free[g] = 0
    nodes = tuple(
        Node(n, 32000, 65536, 32000, 65536, tuple(Accelerator("A100", 16384, f) for f in fs))
        for n, fs in frees.items()
    )
    quotas = (Quota("p0", "A100", 8), Quota("p1", "A100", draw(st.integers(0, 8))))
    claim = Workload("c", "p0", Request(0, 0, gpus=draw(st.sampled_from([2, 4, 8]))))
    return Snapshot(100.0, nodes, tuple(runs), (claim,), quotas, POLICIES["default"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(snapshots(), crowded(), crowded()))
def test_reclaim_and_borrowing_take_at_most_what_the_victim_project_borrows(
    snap: Snapshot,
) -> None:
    if not (snap.config.quotas and snap.quotas):
        return
    d = decide(snap)
    running = {r.workload.id: r for r in snap.running}
    pending = {w.id: w for w in snap.pending}
    guarantee = _guarantee(snap)
    used: dict[tuple[str, str], int] = defaultdict(int)
    for r in snap.running:
        if r.gpu_type:
            used[(r.workload.project, r.gpu_type)] += r.workload.gpu_share
    taken: dict[tuple[str, str], int] = defaultdict(int)
    for p in d.preempts:
        victim = running[p.workload_id]
        claimant = pending[p.for_workload]
        key = (victim.workload.project, str(victim.gpu_type))
        own = (claimant.project, str(victim.gpu_type))
        borrows = used[own] + claimant.gpu_share > guarantee[own]
        if snap.config.guarantee_start and claimant.preemptible:
            borrows = used[own] >= guarantee[own]  # it starts on what is left of it
        if victim.workload.project != claimant.project or borrows:
            taken[key] += victim.workload.gpu_share
    borrowed = _borrowed(snap)
    for key, amount in taken.items():
        assert amount <= borrowed.get(key, 0), (key, amount, borrowed)


TRACE_JOBS = st.lists(
    st.tuples(
        st.sampled_from(["p0", "p1", "p2"]),
        st.integers(0, 40).map(lambda m: 60.0 * m),
        st.integers(1, 400).map(lambda m: 60.0 * m),
        st.sampled_from([1, 2, 4, 8]),
        st.sampled_from([1, 1, 2]),
        st.integers(0, 2),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TRACE_JOBS, st.sampled_from(["default", "las"]), st.sampled_from(["2x8xA100", "3x4xA100"]))
def test_every_preemption_lets_its_claimant_start_or_is_abandoned_on_record(
    rows, policy: str, spec: str
) -> None:
    jobs = [
        TraceJob(
            Workload(f"j{i}", project, Request(gpus=gpus), gang, priority, submit_time=submit),
            duration,
        )
        for i, (project, submit, duration, gpus, gang, priority) in enumerate(rows)
    ]
    nodes = parse_spec(spec)
    quotas = quotas_from_weights(nodes, [(p, 1.0) for p in ("p0", "p1", "p2")])
    config = POLICIES[policy]
    sim = Simulation(Trace.of("random", jobs), nodes, quotas, config, interval_s=60.0)
    sim.run()
    deadline = config.grace_s + sim.interval_s
    pairs = [(victim, claimant) for _, victim, claimant in sim.preempt_log]
    assert len(pairs) == len(set(pairs)), "a workload was preempted twice for one claimant"
    for at, victim, claimant in sim.preempt_log:
        started = any(w == claimant and at <= t <= at + deadline for t, w in sim.start_log)
        abandoned = any(w == claimant and at <= t <= at + deadline for t, w, _ in sim.abandon_log)
        assert started or abandoned, (at, victim, claimant, sim.start_log, sim.abandon_log)


# -- constraints that services need ----------------------------------------------------------

LABELS = ["zone=a", "zone=b", "gpu=a100", "gpu=t4"]

SERVICE_JOBS = st.lists(
    st.tuples(
        st.sampled_from(["web", "api", None, None]),  # app (None: batch work)
        st.sampled_from([None, None, None, 1, 2]),  # max_per_node of batch work
        st.sampled_from(
            [(), (), (), ("zone=a",), ("gpu=a100",), ("zone=b", "gpu=t4"), ("zone=c",)]
        ),
        st.booleans(),  # preemptible
        st.sampled_from([250, 500, 1000, 1000, 2000]),  # thousandths of a GPU per worker
        st.sampled_from([1, 2, 3]),  # gang
        st.integers(0, 2),  # priority
        st.integers(0, 20).map(lambda m: 120.0 * m),  # submit
        st.sampled_from([None, None, 600.0, 3600.0]),  # duration (None: until the end)
    ),
    min_size=1,
    max_size=20,
)


class _Checked(Simulation):
    """The simulator, checking the hard constraints after every round it applies."""

    def _apply(self, d: Decisions) -> None:
        preempted = {p.workload_id for p in d.preempts}
        for wid in preempted:
            assert self.running[wid].workload.preemptible, f"{wid} is not preemptible"
        labels = {n.name: set(n.labels) for n in self.nodes}
        for p in d.preempts:
            # a constrained claimant frees room only on a node it may run on
            claimant = self.pending[p.for_workload]
            victim_nodes = {worker.node for worker in self.running[p.workload_id].workers}
            assert any(set(claimant.node_selector) <= labels[n] for n in victim_nodes), p
        super()._apply(d)
        labels = {n.name: set(n.labels) for n in self.nodes}
        per_node: dict[tuple[str, str], int] = defaultdict(int)
        limits: dict[str, int] = {}
        for r in self.running.values():
            w = r.workload
            for worker in r.workers:
                assert set(w.node_selector) <= labels[worker.node], (w, worker)
                per_node[(w.app or w.id, worker.node)] += 1
            if w.max_per_node is not None:
                key = w.app or w.id
                limits[key] = min(limits.get(key, w.max_per_node), w.max_per_node)
        for (app, node), count in per_node.items():
            assert count <= limits.get(app, count), (app, node, count)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    SERVICE_JOBS,
    st.sampled_from(sorted(POLICIES)),
    st.lists(st.sets(st.sampled_from(LABELS)), min_size=1, max_size=3),
)
def test_services_keep_their_limits_selectors_and_protection(rows, policy: str, labels) -> None:
    """Long-running inference instances with per-node limits replay with no limit exceeded,
    every selector satisfied and no non-preemptible job preempted, under every policy."""
    jobs = [
        TraceJob(
            Workload(
                f"j{i}",
                "p0",
                Request(1000, 1024, gpus=milli // 1000, gpu_milli=milli % 1000),
                gang,
                # batch mostly outranks services, but a service of class 2 may preempt
                # batch of class 1: constrained claimants (selectors, limits) preempt too
                priority if app else priority + 1,
                submit_time=submit,
                preemptible=preemptible,
                app=app,
                # the same app keeps one limit, as a deployment would; batch work has a
                # limit only sometimes and no selector, so that it can start preemptions
                max_per_node=limit if app is None else {"web": 2, "api": 1}[app],
                node_selector=selector if app else (),
            ),
            duration,
        )
        for i, (app, limit, selector, preemptible, milli, gang, priority, submit, duration) in (
            enumerate(rows)
        )
    ]
    nodes = tuple(
        replace(n, labels=tuple(sorted(ls)))
        for n, ls in zip(parse_spec(f"{len(labels)}x2xA100"), labels, strict=True)
    )
    # no quotas: a higher class may then preempt a lower one of its project
    sim = _Checked(Trace.of("services", jobs), nodes, (), POLICIES[policy], interval_s=60.0)
    sim.run()
    assert sim.calls > 0
    # and every preemption, constrained claimant or not, is one its claimant can use: it
    # starts within the grace period plus one tick, or its claim is abandoned on record
    deadline = POLICIES[policy].grace_s + sim.interval_s
    for at, victim, claimant in sim.preempt_log:
        started = any(w == claimant and at <= t <= at + deadline for t, w in sim.start_log)
        abandoned = any(w == claimant and at <= t <= at + deadline for t, w, _ in sim.abandon_log)
        assert started or abandoned, (at, victim, claimant, sim.start_log, sim.abandon_log)


@st.composite
def constrained_claims(draw: st.DrawFn) -> Snapshot:
    """Full nodes with random labels, running low-class work of the claimant's project (some
    of it the claimant's own app), and one high-class constrained claimant."""
    nodes: list[Node] = []
    runs: list[Running] = []
    for i in range(draw(st.integers(2, 4))):
        labels = tuple(sorted(draw(st.sets(st.sampled_from(["zone=a", "zone=b", "gpu=x"])))))
        free = [1000] * 4
        for g in range(4):
            if draw(st.integers(0, 4)) == 0:
                continue  # left free
            app = draw(st.sampled_from([None, None, "web"]))
            w = replace(Workload(f"r{len(runs)}", "p0", Request(0, 0, gpus=1)), app=app)
            started = float(draw(st.integers(0, 100)))
            runs.append(Running(w, (WorkerPlacement(f"n{i}", (g,)),), started, "A100"))
            free[g] = 0
        accs = tuple(Accelerator("A100", 16384, f) for f in free)
        nodes.append(Node(f"n{i}", 32000, 65536, 32000, 65536, accs, labels=labels))
    claimant = Workload(
        "svc",
        "p0",
        Request(0, 0, gpus=draw(st.sampled_from([1, 2, 4]))),
        gang=draw(st.integers(1, 3)),
        priority=5,
        app="web",
        max_per_node=draw(st.sampled_from([None, 1, 2])),
        node_selector=draw(st.sampled_from([(), ("zone=a",), ("gpu=x", "zone=b")])),
    )
    policy = POLICIES[draw(st.sampled_from(["default", "fifo-backfill"]))]
    return Snapshot(500.0, tuple(nodes), tuple(runs), (claimant,), (), policy)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(constrained_claims())
def test_constrained_work_preempts_and_holds_only_room_it_can_use(snap: Snapshot) -> None:
    """Every victim of a constrained claimant, and every node of its claim or of its backfill
    hold, is a node its selector allows; the claim's nodes can take all its workers within
    its spread limit once its victims are gone."""
    d = decide(snap)
    claimant = snap.pending[0]
    labels = {n.name: set(n.labels) for n in snap.nodes}
    allowed = {n for n, ls in labels.items() if set(claimant.node_selector) <= ls}
    running = {r.workload.id: r for r in snap.running}
    for p in d.preempts:
        assert {w.node for w in running[p.workload_id].workers} <= allowed, p
    leaving = {p.workload_id for p in d.preempts}
    for claim in d.claims:
        assert set(claim.nodes) <= allowed, claim
        if claimant.max_per_node is not None:
            room = 0
            for name in claim.nodes:
                staying = sum(
                    1
                    for r in snap.running
                    if r.workload.app == "web" and r.workload.id not in leaving
                    for w in r.workers
                    if w.node == name
                )
                room += max(0, claimant.max_per_node - staying)
            assert room >= claimant.gang, (claim, d.preempts)
    for wait in d.waits:
        found = re.search(r"holding what it needs on nodes? ([\w, ]+) so later", wait.reason)
        if found:
            assert set(found.group(1).split(", ")) <= allowed, wait.reason


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(), st.lists(st.booleans(), min_size=1, max_size=12))
def test_fair_runs_serve_projects_in_the_order_in_order_does(
    ws: tuple[Workload, ...], placed: list[bool]
) -> None:
    """The round takes workloads a project's queue at a time (``fair_runs``): whichever of
    them the caller charges as placed, the order is the one ``in_order`` yields."""
    config = POLICIES["default"]

    def fair() -> FairShare:
        return FairShare({"A100": 8, "T4": 8}, 64_000, 512_000, running_counts(()))

    def charge(share: FairShare, i: int, w: Workload) -> None:
        if placed[i % len(placed)]:
            share.charge(w, w.request.gpu_type or "A100")

    expected, share = [], fair()
    for i, w in enumerate(in_order(config, list(ws), share)):
        expected.append(w.id)
        charge(share, i, w)
    got: list[str] = []
    share = fair()
    for queue in fair_runs(config, list(ws), share):
        charges = share.charges
        while queue:
            w = queue.popleft()
            got.append(w.id)
            charge(share, len(got) - 1, w)
            if share.charges != charges:
                break
    assert got == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads("r"), workloads())
def test_fair_share_charged_in_place_is_the_share_worked_out_afresh(
    already: tuple[Workload, ...], placed: tuple[Workload, ...]
) -> None:
    """``FairShare.charge`` updates a project's dominant share from what the placement
    raised only: after every charge, each project's share is exactly (the same float) the
    one a fair share built afresh over all that work gives, malformed requests included."""
    capacity = {"A100": 8, "T4": 8, "H100": 0}

    def as_running(ws: list[Workload]) -> list[Running]:
        return [Running(w, (), 0.0, w.request.gpu_type or "A100") for w in ws]

    share = FairShare(capacity, 64_000, 512_000, running_counts(as_running(list(already))))
    charged: list[Workload] = list(already)
    for w in placed:
        share.charge(w, w.request.gpu_type or "A100")
        charged.append(w)
        afresh = FairShare(capacity, 64_000, 512_000, running_counts(as_running(charged)))
        for project in ("p0", "p1", "p2"):
            assert share.share(project) == afresh.share(project), (project, w)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(), st.lists(st.booleans(), min_size=1, max_size=12))
def test_the_mix_counted_by_the_reject_check_is_the_mix_of_all_work(
    snap: Snapshot, bad_limit: list[bool]
) -> None:
    """A round without claims takes its workload mix from the reject check's counts (see
    ``round_state``): the same model as counting every pending and running request, whatever
    the check answers (a malformed request or a per-node limit below 1 included)."""
    pending = tuple(
        replace(w, max_per_node=0) if bad_limit[i % len(bad_limit)] else w
        for i, w in enumerate(snap.pending)
    )
    snap = replace(snap, pending=pending, config=POLICIES["default"])
    round_state = RoundState(snap)
    assert round_state.mix_later and round_state.model is None
    for w in snap.pending:
        round_state._reject(w)
    round_state._mix_from_rejects()
    every = [(w.request, 1) for w in snap.pending] + [(r.workload.request, 1) for r in snap.running]
    expected = FragModel.of(every)
    got = round_state.model
    assert (got and got.shapes) == (expected and expected.shapes)
