"""The autoscaling policy (a pure function) and the scheduler's spot rule."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from underlay.compute.autoscaler.policy import (
    Member,
    Pool,
    ScaleInput,
    ScalePlan,
    plan_scaling,
    track_idle,
)
from underlay.compute.autoscaler.providers import NodeGroup, headroom_nodes, table_price
from underlay.compute.scheduler import (
    Node,
    PolicyConfig,
    Quota,
    Request,
    Running,
    Snapshot,
    Window,
    WorkerPlacement,
    Workload,
    decide,
)
from underlay.compute.scheduler.constraints import SPOT_LABEL

A100 = NodeGroup("a100", 8000, 65536, "A100", 2, max_nodes=4)
SPOT = replace(A100, name="a100-spot", spot=True)
CPU = NodeGroup("cpu", 4000, 16384, max_nodes=3)


def job(i: int, gpus: int = 1, *, preemptible: bool = True, project: str = "p", **kw) -> Workload:
    request = Request(cpu_milli=1000, memory_mib=1024, gpus=gpus, gpu_type="A100" if gpus else None)
    return Workload(f"j{i}", project, request, preemptible=preemptible, **kw)


def plan(
    pending: list[Workload],
    pools: list[Pool],
    *,
    nodes: tuple[Node, ...] = (),
    running: tuple[Running, ...] = (),
    members: tuple[Member, ...] = (),
    clock: float = 1000.0,
    quotas: tuple[Quota, ...] = (),
    config: PolicyConfig | None = None,
    **kw: Any,
) -> ScalePlan:
    """The plan for this queue, on ``nodes`` plus the groups' room as nodes not up (as the
    live loop shows them to the scheduler)."""
    groups = tuple(p.group for p in pools)
    present = {g.name: sum(1 for m in members if m.group == g.name) for g in groups}
    all_nodes = (*nodes, *headroom_nodes(groups, present))
    snapshot = Snapshot(clock, all_nodes, running, tuple(pending), quotas, config or PolicyConfig())
    return plan_scaling(ScaleInput(snapshot, decide(snapshot), tuple(pools), members, **kw))


def launched(p: ScalePlan) -> dict[str, int]:
    out: dict[str, int] = {}
    for launch in p.launches:
        out[launch.group] = out.get(launch.group, 0) + launch.count
    return out


def test_waiting_work_launches_as_many_nodes_as_it_fills() -> None:
    # five one-GPU jobs; a node has two GPUs: three nodes
    p = plan([job(i) for i in range(5)], [Pool(A100, 4.0)])
    assert launched(p) == {"a100": 3}
    assert "j0" in p.launches[0].reason


def test_nothing_waits_nothing_launches_and_min_nodes_are_kept() -> None:
    assert plan([], [Pool(A100, 4.0)]).launches == ()
    p = plan([], [Pool(replace(A100, min_nodes=2), 4.0)])
    assert launched(p) == {"a100": 2}


def test_the_cheapest_group_that_fits_is_chosen_and_the_shape_matters() -> None:
    pools = [Pool(A100, 4.0), Pool(CPU, 0.2)]
    assert launched(plan([job(1, gpus=0)], pools)) == {"cpu": 1}
    assert launched(plan([job(1, gpus=1)], pools)) == {"a100": 1}


def test_spot_is_chosen_for_preemptible_work_only() -> None:
    pools = [Pool(A100, 4.0), Pool(SPOT, 1.2)]
    assert launched(plan([job(1)], pools)) == {"a100-spot": 1}
    assert launched(plan([job(1, preemptible=False)], pools)) == {"a100": 1}
    mixed = launched(plan([job(1), job(2, preemptible=False)], pools))
    assert mixed == {"a100-spot": 1, "a100": 1}


def test_the_scheduler_keeps_non_preemptible_work_off_spot_nodes() -> None:
    spot = SPOT.node("spot-1")
    firm = job(1, preemptible=False)
    d = decide(Snapshot(0.0, (spot,), (), (firm, job(2))))
    assert [p.workload_id for p in d.places] == ["j2"]
    assert "underlay.io/spot=false" in (d.reason("j1") or "")
    on_demand = A100.node("od-1")
    d = decide(Snapshot(0.0, (spot, on_demand), (), (firm,)))
    assert d.places[0].workers[0].node == "od-1"
    assert SPOT_LABEL in spot.labels


def test_launching_nodes_count_as_capacity() -> None:
    booting = (Member("a100-x", "a100", ready=False, launched_at=990.0),)
    assert plan([job(1), job(2)], [Pool(A100, 4.0)], members=booting).launches == ()
    more = plan([job(i) for i in range(4)], [Pool(A100, 4.0)], members=booting)
    assert launched(more) == {"a100": 1}


def test_a_blocked_project_launches_nothing() -> None:
    p = plan([job(1, project="broke")], [Pool(A100, 4.0)], blocked_projects=frozenset({"broke"}))
    assert p.launches == ()


def test_work_waiting_for_its_quota_launches_nothing() -> None:
    quota = Quota("p", "A100", guaranteed=1, borrow_limit=0)
    node = A100.node("a100-1")
    held = Running(job(9), (WorkerPlacement("a100-1", (0,)),), 0.0, "A100")
    p = plan([job(1)], [Pool(A100, 4.0)], nodes=(node,), running=(held,), quotas=(quota,))
    assert p.launches == ()


def test_work_held_for_a_window_or_asking_for_labels_no_group_has_launches_nothing() -> None:
    held = job(1, deferrable=True)
    window = PolicyConfig(low_carbon_windows=(Window(0.0, 60.0),))  # closed at clock 1000
    assert plan([held], [Pool(A100, 4.0)], config=window).launches == ()
    assert launched(plan([held], [Pool(A100, 4.0)])) == {"a100": 1}  # no window: it runs
    picky = job(2, node_selector=("zone=b",))
    assert plan([picky], [Pool(A100, 4.0)]).launches == ()
    zoned = replace(A100, labels=("zone=b",))
    assert launched(plan([picky], [Pool(zoned, 4.0)])) == {"a100": 1}


def test_idle_nodes_go_after_idle_s_down_to_min() -> None:
    group = replace(A100, min_nodes=1)
    members = tuple(
        Member(f"a100-{i}", "a100", ready=True, launched_at=0.0, idle_since=100.0 * i)
        for i in range(3)
    )
    nodes = tuple(group.node(m.node) for m in members)
    p = plan([], [Pool(group, 4.0)], nodes=nodes, members=members, clock=250.0, idle_s=100.0)
    assert [t.node for t in p.terminates] == ["a100-0", "a100-1"]  # a100-2 is the min
    early = plan([], [Pool(group, 4.0)], nodes=nodes, members=members, clock=150.0, idle_s=100.0)
    assert [t.node for t in early.terminates] == ["a100-0"]
    assert early.recheck_at == 200.0


def test_an_instance_that_never_registers_is_terminated() -> None:
    stuck = (Member("a100-x", "a100", ready=False, launched_at=0.0),)
    p = plan([], [Pool(A100, 4.0)], members=stuck, clock=700.0, launch_timeout_s=600.0)
    assert [t.node for t in p.terminates] == ["a100-x"]
    assert "not up 600 s after its launch" in p.terminates[0].reason


def test_an_instance_of_a_group_no_longer_configured_is_terminated() -> None:
    orphan = (Member("old-1", "old", ready=True, launched_at=0.0, idle_since=None),)
    p = plan([], [Pool(A100, 4.0)], members=orphan)
    assert [(t.node, t.reason) for t in p.terminates] == [
        ("old-1", "its group old is no longer configured")
    ]


def test_track_idle_keeps_the_first_idle_time() -> None:
    first = track_idle({}, ["a", "b"], {"a"}, 10.0)
    assert first == {"a": None, "b": 10.0}
    assert track_idle(first, ["a", "b"], set(), 20.0) == {"a": 20.0, "b": 10.0}


def test_table_price_discounts_spot() -> None:
    prices = {"cpu": 0.05, "A100": 2.0}
    assert table_price(A100, prices, 0.3) == 2 * 2.0 + 8 * 0.05
    assert abs(table_price(SPOT, prices, 0.3) - 0.3 * 4.4) < 1e-9


# -- properties -------------------------------------------------------------------------------


@st.composite
def scale_inputs(draw: st.DrawFn) -> tuple[list[Workload], list[Pool], float | None, set[str]]:
    pools = []
    for i in range(draw(st.integers(1, 3))):
        gpus = draw(st.sampled_from([0, 1, 2, 4]))
        group = NodeGroup(
            f"g{i}",
            draw(st.sampled_from([2000, 8000])),
            32768,
            "A100" if gpus else None,
            gpus,
            min_nodes=draw(st.integers(0, 1)),
            max_nodes=draw(st.integers(0, 4)),
            spot=draw(st.booleans()),
        )
        pools.append(Pool(group, draw(st.sampled_from([0.5, 1.0, 3.0]))))
    pending = [
        job(
            j,
            gpus=draw(st.integers(0, 4)),
            preemptible=draw(st.booleans()),
            project=draw(st.sampled_from(["p", "q"])),
        )
        for j in range(draw(st.integers(0, 8)))
    ]
    cap = draw(st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.5, 6.0])))
    blocked = draw(st.sets(st.sampled_from(["p", "q"])))
    return pending, pools, cap, blocked


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scale_inputs())
def test_a_plan_never_exceeds_max_nodes_or_the_price_cap(
    case: tuple[list[Workload], list[Pool], float | None, set[str]],
) -> None:
    pending, pools, cap, blocked = case
    p = plan(pending, pools, max_price_per_hour=cap, blocked_projects=frozenset(blocked))
    counts = launched(p)
    price = {pool.group.name: pool.price for pool in pools}
    for pool in pools:
        assert counts.get(pool.group.name, 0) <= pool.group.max_nodes
    if cap is not None:
        assert sum(price[g] * k for g, k in counts.items()) <= cap + 1e-9
    for pool in pools:  # beyond min_nodes, only eligible waiting work launches nodes
        extra = counts.get(pool.group.name, 0) - pool.group.min_nodes
        if extra > 0:
            eligible = [w for w in pending if w.project not in blocked]
            assert eligible
            if pool.group.spot:
                assert any(w.preemptible for w in eligible)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scale_inputs())
def test_spot_is_never_launched_for_non_preemptible_work(
    case: tuple[list[Workload], list[Pool], float | None, set[str]],
) -> None:
    pending, pools, cap, _ = case
    firm = [replace(w, preemptible=False) for w in pending]
    p = plan(firm, pools, max_price_per_hour=cap)
    for launch in p.launches:
        group = next(pool.group for pool in pools if pool.group.name == launch.group)
        if group.spot:
            assert launch.count <= group.min_nodes  # only to keep the group's minimum


def test_group_settings_are_checked_at_start() -> None:
    from pydantic import ValidationError

    from underlay.config import AutoscalerSettings

    group = {"name": "gpu", "max_nodes": 2}
    with pytest.raises(ValidationError, match="node group names must differ: gpu, gpu"):
        AutoscalerSettings.model_validate({"groups": [group, group]})
    with pytest.raises(ValidationError, match="group gpu: min_nodes is above max_nodes"):
        AutoscalerSettings.model_validate({"groups": [{**group, "min_nodes": 3}]})
    with pytest.raises(ValidationError, match="name"):
        AutoscalerSettings.model_validate({"groups": [{"name": "Bad Name"}]})
