"""Property tests: invariants of ``decide`` over random snapshots."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from underlay.compute.scheduler import (
    POLICIES,
    Accelerator,
    Node,
    Quota,
    Request,
    Running,
    Snapshot,
    WorkerPlacement,
    Workload,
    decide,
)
from underlay.compute.scheduler.codec import decisions_from_json, snapshot_from_json, to_json

TYPES = ["A100", "T4"]


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
        w = Workload(f"r{j}", project, req, priority=draw(st.integers(0, 2)))
        drain = draw(st.sampled_from([None, None, None, 50.0]))
        running.append(Running(w, workers, float(draw(st.integers(0, 90))), nd["type"], drain))
    built = tuple(
        Node(
            nd["name"],
            32000,
            65536,
            nd["cpu"],
            nd["mem"],
            tuple(
                Accelerator(nd["type"], 16384, f, ok)
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
        out.append(
            Workload(
                f"{prefix}{i}",
                draw(st.sampled_from(["p0", "p1", "p2"])),
                req,
                gang=draw(st.sampled_from([1, 1, 1, 2, 3])),
                priority=draw(st.integers(0, 2)),
                submit_time=float(draw(st.integers(0, 100))),
                attained_service=float(draw(st.sampled_from([0, 0, 5000, 50000]))),
            )
        )
    return tuple(out)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    nodes, running = draw(clusters())
    quotas = tuple(
        Quota(p, t, draw(st.integers(0, 8)), draw(st.sampled_from([None, 0, 2])))
        for p in ("p0", "p1", "p2")
        for t in TYPES
        if draw(st.booleans())
    )
    config = POLICIES[draw(st.sampled_from(sorted(POLICIES)))]
    return Snapshot(100.0, nodes, running, draw(workloads()), quotas, config)


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
