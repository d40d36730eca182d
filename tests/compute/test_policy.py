"""The scheduling policy, rule by rule, on small hand-built snapshots."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from underlay.compute.scheduler import (
    POLICIES,
    Claim,
    Decisions,
    PowerModel,
    Quota,
    Window,
    decide,
    policy_config,
)
from underlay.errors import InvalidInput

from .builders import job, node, occupy, placed, rejected, running_on, snapshot, waiting

# -- reject -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workload", "match"),
    [
        (job("nine", gpus=9), r"needs 9 GPUs per worker; the largest node has 8"),
        (job("h100", gpus=1, gpu_type="H100"), r"no node has accelerator type 'H100'.*A100"),
        (job("frac", milli=1500), r"asks for 1.5 of one GPU; a fraction cannot exceed 1"),
        (job("neg", gpus=-1), r"gpus must not be negative"),
        (job("both", gpus=1, milli=500), r"either whole GPUs or a fraction"),
        (job("gang0", gpus=1, gang=0), r"gang size must be at least 1"),
        (job("wide", gpus=8, gang=3), r"gang of 3 workers needs 24 GPUs.*only 2 such workers"),
        (job("cpu", cpu=100_000), r"needs 100 CPUs per worker; the largest node has 64"),
    ],
)
def test_requests_no_node_could_ever_satisfy_are_rejected_with_the_reason(workload, match):
    d = decide(snapshot([node("n0"), node("n1")], [workload]))
    assert list(rejected(d)) == [workload.id]
    assert not d.places and not d.waits
    assert re.search(match, d.reason(workload.id) or "")


def test_capacity_that_is_only_busy_or_unhealthy_means_wait_not_reject():
    busy = running_on(job("r", gpus=8), [("n0", tuple(range(8)))])
    nodes = [*occupy([node("n0")], [busy]), node("n1", healthy=False)]
    d = decide(snapshot(nodes, [job("w", gpus=8)], running=[busy]))
    assert "w" in waiting(d)
    assert not d.rejects


# -- health -------------------------------------------------------------------------------


def test_unhealthy_nodes_and_accelerators_are_never_chosen():
    nodes = [node("sick", healthy=False), node("half", gpus=2, unhealthy_gpus=[0])]
    d = decide(snapshot(nodes, [job("a", gpus=1), job("b", gpus=1, submit=1)], config="fifo"))
    assert placed(d) == {"a": [("half", (1,), 1000)]}
    assert "b" in waiting(d)


# -- quotas and borrowing -----------------------------------------------------------------


def test_work_within_quota_is_guaranteed_and_work_above_it_borrows_idle_capacity():
    quotas = [Quota("vision", "A100", 8), Quota("nlp", "A100", 8)]
    pending = [job("v1", gpus=8), job("v2", gpus=8, submit=1)]
    d = decide(snapshot([node("n0"), node("n1")], pending, quotas=quotas))
    by_id = {p.workload_id: p for p in d.places}
    assert not by_id["v1"].borrowed
    assert by_id["v2"].borrowed


def test_guaranteed_claims_are_served_before_anyone_borrows():
    quotas = [Quota("vision", "A100", 8), Quota("nlp", "A100", 8)]
    # vision submitted first and would take both nodes, but nlp's claim comes first.
    pending = [job("v1", gpus=8), job("v2", gpus=8, submit=1), job("n1", "nlp", gpus=8, submit=2)]
    d = decide(snapshot([node("n0"), node("n1")], pending, quotas=quotas))
    assert set(placed(d)) == {"v1", "n1"}
    assert waiting(d)["v2"] == (
        "project vision uses 8 of its 8 guaranteed A100; no idle A100 to borrow "
        "(no healthy node has 8 free A100 GPUs (most free A100 on one node: 0))"
    )


def test_borrow_limit_caps_borrowing():
    quotas = [Quota("vision", "A100", 4, borrow_limit=2)]
    d = decide(snapshot([node("n0")], [job("v", gpus=8)], quotas=quotas))
    assert waiting(d)["v"] == (
        "project vision uses 0 of its 4 guaranteed A100 (may borrow 2 more); "
        "its borrow limit is reached"
    )


def test_owner_reclaims_borrowed_capacity_lowest_priority_least_progress_first():
    quotas = [Quota("vision", "A100", 8), Quota("nlp", "A100", 8)]
    runs = [
        running_on(job("old", "nlp", gpus=4), [("n0", (0, 1, 2, 3))], started=0.0),
        running_on(job("new", "nlp", gpus=4), [("n0", (4, 5, 6, 7))], started=900.0),
        running_on(job("own", "nlp", gpus=8), [("n1", tuple(range(8)))], started=0.0),
    ]
    nodes = occupy([node("n0"), node("n1")], runs)
    claim = job("v", gpus=4, submit=950.0)
    d = decide(snapshot(nodes, [claim], running=runs, quotas=quotas, clock=1000.0))
    assert [(p.workload_id, p.for_workload, p.grace_s) for p in d.preempts] == [("new", "v", 30.0)]
    assert "claims back its guaranteed A100" in d.preempts[0].reason
    assert waiting(d)["v"] == "preempting new to make room (grace period 30 s)"


def test_a_claimant_waits_for_work_already_draining_instead_of_preempting_more():
    quotas = [Quota("vision", "A100", 8), Quota("nlp", "A100", 8)]
    runs = [
        running_on(job("a", "nlp", gpus=8), [("n0", tuple(range(8)))], draining_until=1030.0),
        running_on(job("b", "nlp", gpus=8), [("n1", tuple(range(8)))]),
    ]
    nodes = occupy([node("n0"), node("n1")], runs)
    d = decide(snapshot(nodes, [job("v", gpus=8)], running=runs, quotas=quotas, clock=1000.0))
    assert not d.preempts
    assert waiting(d)["v"] == "waiting for a to release their resources after preemption"


def test_work_within_its_own_guarantee_is_never_reclaimed():
    quotas = [Quota("vision", "A100", 8), Quota("nlp", "A100", 8)]
    runs = [running_on(job("n", "nlp", gpus=8), [("n0", tuple(range(8)))])]
    nodes = occupy([node("n0")], runs)
    d = decide(snapshot(nodes, [job("v", gpus=8)], running=runs, quotas=quotas))
    assert not d.preempts
    assert "v" in waiting(d)


def test_a_borrowing_claimant_never_preempts_its_own_project_within_its_guarantee():
    # The livelock of issue 9: b runs W and X within its 16 guaranteed GPUs; Y, above the
    # guarantee, used to preempt them by service level, lose the room to them again in the
    # guaranteed pass of the next round, and preempt them again, forever.
    quotas = [Quota("a", "A100", 16), Quota("b", "A100", 16)]
    runs = [
        running_on(job(wid, project, gpus=8), [(f"n{i}", tuple(range(8)))], started=0.0)
        for i, (wid, project) in enumerate([("Z", "a"), ("W", "b"), ("X", "b")])
    ]
    nodes = occupy([node(f"n{i}") for i in range(4)], runs)
    claimant = job("Y", "b", gpus=8, gang=2, submit=3600.0)
    d = decide(snapshot(nodes, [claimant], running=runs, quotas=quotas, clock=3660.0))
    assert not d.preempts
    assert re.search(r"project b uses 16 of its 16 guaranteed A100; no idle A100", waiting(d)["Y"])


def _b_holds(spots: list[tuple[str, int]]) -> tuple[list, tuple]:
    runs = [
        running_on(job(f"b{i}", "b", gpus=1), [(n, (g,))], started=float(i))
        for i, (n, g) in enumerate(spots)
    ]
    return runs, occupy([node("n0"), node("n1")], runs)


def test_reclaim_takes_at_most_what_the_victim_project_borrows():
    # b holds 9 GPUs with a guarantee of 8: it borrows 1, so a's claim may take 1 GPU of it
    # and no more. 4 of b's jobs share n0 with 4 free GPUs: a does not preempt them, it waits.
    quotas = [Quota("a", "A100", 8), Quota("b", "A100", 8)]
    runs, nodes = _b_holds([("n0", g) for g in range(4)] + [("n1", g) for g in range(5)])
    d = decide(snapshot(nodes, [job("a8", "a", gpus=8)], running=runs, quotas=quotas, clock=99.0))
    assert not d.preempts
    assert "a8" in waiting(d)
    # With 7 GPUs free beside the one b borrows on n0, that one is all reclaim takes.
    runs, nodes = _b_holds([("n0", 0)] + [("n1", g) for g in range(8)])
    d = decide(snapshot(nodes, [job("a8", "a", gpus=8)], running=runs, quotas=quotas, clock=99.0))
    assert [p.workload_id for p in d.preempts] == ["b0"]
    assert d.preempts[0].reason.endswith("b0 borrows it")


def test_work_starts_on_what_is_left_of_its_guarantee_and_borrows_the_rest():
    # vision uses 6 of its 8 A100; its 4-GPU job would take it to 10. It still starts in the
    # guaranteed pass (marked borrowed), before nlp's job that borrows outright, although
    # nlp has the smaller dominant share. The strict rule makes both borrowers.
    quotas = [Quota("vision", "A100", 8), Quota("nlp", "A100", 1)]
    runs = [
        running_on(job("v6", gpus=6), [("n0", tuple(range(6)))]),
        running_on(job("n2", "nlp", gpus=2), [("n0", (6, 7))]),
    ]
    nodes = occupy([node("n0"), node("n1", gpus=4)], runs)
    pending = [job("b", "nlp", gpus=4, submit=0.0), job("a", gpus=4, submit=1.0)]
    d = decide(snapshot(nodes, pending, running=runs, quotas=quotas))
    assert set(placed(d)) == {"a"}
    assert d.places[0].borrowed
    strict = policy_config("default", guarantee_start=False)
    d = decide(snapshot(nodes, pending, running=runs, quotas=quotas, config=strict))
    assert set(placed(d)) == {"b"}


def test_a_borrower_preempts_by_service_level_only_what_other_projects_borrow():
    # vision is at its guarantee, so its short job borrows; nlp runs 4 GPUs on a guarantee
    # of 2. The borrower may preempt nlp's work that has more service, but only the 2 GPUs
    # nlp borrows, and nothing once nlp is within its guarantee.
    def decide_with(nlp_guarantee: int, **overrides: object) -> Decisions:
        quotas = [Quota("vision", "A100", 4), Quota("nlp", "A100", nlp_guarantee)]
        runs = [
            running_on(job("v4", gpus=4), [("n0", (0, 1, 2, 3))]),
            running_on(job("long", "nlp", gpus=2), [("n0", (4, 5))], started=0.0),
            running_on(job("longer", "nlp", gpus=2), [("n0", (6, 7))], started=0.0),
        ]
        nodes = occupy([node("n0")], runs)
        config = policy_config("default", **overrides)
        short = job("short", gpus=2, submit=7000.0)
        return decide(snapshot(nodes, [short], runs, quotas, config, clock=7200.0))

    d = decide_with(2)
    assert len(d.preempts) == 1 and d.preempts[0].for_workload == "short"
    assert "accelerator-hours (service level" in d.preempts[0].reason
    assert not decide_with(4).preempts
    assert not decide_with(2, las_borrowed=False).preempts


def test_the_room_freed_by_a_preemption_is_held_for_its_claimant_until_it_starts():
    quotas = [Quota("vision", "A100", 8), Quota("nlp", "A100", 8)]
    own = running_on(job("own", "nlp", gpus=8), [("n1", tuple(range(8)))], started=0.0)
    old = running_on(job("old", "nlp", gpus=4), [("n0", (0, 1, 2, 3))], started=0.0)
    new = running_on(job("new", "nlp", gpus=4), [("n0", (4, 5, 6, 7))], started=900.0)
    runs = [own, old, new]
    nodes = [node("n0"), node("n1")]
    v = job("v", gpus=4, submit=950.0)
    first = decide(snapshot(occupy(nodes, runs), [v], running=runs, quotas=quotas, clock=1000.0))
    assert [(p.workload_id, p.for_workload) for p in first.preempts] == [("new", "v")]
    assert [(c.workload_id, c.victims, c.nodes) for c in first.claims] == [("v", ("new",), ("n0",))]

    # During the grace period the room stays held and nothing else is preempted for v.
    leaving = [own, old, replace(new, draining_until=1030.0)]
    rival = job("rival", gpus=4, priority=5, submit=1010.0)
    snap = replace(
        snapshot(occupy(nodes, leaving), [v, rival], running=leaving, quotas=quotas, clock=1020.0),
        claims=first.claims,
    )
    during = decide(snap)
    assert "held for it on node n0" in waiting(during)["v"]
    assert [c.workload_id for c in during.claims] == ["v"]
    assert all(p.for_workload != "v" for p in during.preempts)

    # Once the victim is gone, v starts there before rival (a higher priority class of the
    # same project, which would otherwise go first and take the room).
    after = [own, old]
    back = replace(new.workload, attained_service=1000.0)
    snap = replace(
        snapshot(
            occupy(nodes, after), [v, rival, back], running=after, quotas=quotas, clock=1060.0
        ),
        claims=during.claims,
    )
    d = decide(snap)
    assert placed(d)["v"] == [("n0", (4, 5, 6, 7), 1000)]
    assert "v" not in {c.workload_id for c in d.claims} and not d.abandoned


def test_a_claim_whose_claimant_left_is_abandoned_with_a_reason():
    claim = Claim("gone", ("victim",), ("n0",), "A100", 10.0)
    snap = replace(snapshot([node("n0")], [job("x", gpus=8)], clock=60.0), claims=(claim,))
    d = decide(snap)
    assert [(a.workload_id, a.victims, a.reason) for a in d.abandoned] == [
        ("gone", ("victim",), "gone is no longer waiting")
    ]
    assert "x" in placed(d)


# -- priority classes and fair share ------------------------------------------------------


def test_higher_priority_class_goes_first_inside_a_project():
    pending = [job("low", gpus=8, submit=0), job("high", gpus=8, priority=5, submit=9)]
    d = decide(snapshot([node("n0")], pending))
    assert set(placed(d)) == {"high"}


def test_higher_class_preempts_lower_class_of_the_same_project():
    runs = [running_on(job("low", gpus=8), [("n0", tuple(range(8)))], started=0.0)]
    nodes = occupy([node("n0")], runs)
    d = decide(snapshot(nodes, [job("high", gpus=8, priority=5)], running=runs, clock=500.0))
    assert [p.workload_id for p in d.preempts] == ["low"]
    assert "priority class 5, above low's 0" in d.preempts[0].reason


@pytest.mark.parametrize("config", ["default", "las"])
def test_a_victim_must_have_run_the_minimum_run_time(config):
    """Priority (default) and service-level (las) victims are spared for ``min_runtime_s``
    after they start, and the round says when to look again."""
    cfg = replace(policy_config(config), min_runtime_s=600.0)
    victim = job("low", "a", gpus=8, attained=2 * 3600.0)
    runs = [running_on(victim, [("n0", tuple(range(8)))], started=1000.0)]
    nodes = occupy([node("n0")], runs)
    claimant = [job("high", "a", gpus=8, priority=5 if config == "default" else 0)]
    early = decide(snapshot(nodes, claimant, running=runs, config=cfg, clock=1599.0))
    assert not early.preempts and not early.places
    assert early.recheck_at == 1600.0
    late = decide(snapshot(nodes, claimant, running=runs, config=cfg, clock=1600.0))
    assert [(p.workload_id, p.for_workload) for p in late.preempts] == [("low", "high")]


def test_fair_share_switches_project_after_every_placement_not_only_the_first():
    pending = [job(f"{p}{i}", p, gpus=1, submit=float(i)) for p in ("a", "b") for i in range(4)]
    d = decide(snapshot([node("n0", gpus=5)], pending))
    assert set(placed(d)) == {"a0", "b0", "a1", "b1", "a2"}


def test_fair_share_serves_the_project_with_the_smallest_dominant_share_first():
    runs = [running_on(job("big", "vision", gpus=4), [("n0", (0, 1, 2, 3))])]
    nodes = occupy([node("n0", gpus=8)], runs)
    pending = [job("v", "vision", gpus=4, submit=0), job("n", "nlp", gpus=4, submit=5)]
    d = decide(snapshot(nodes, pending, running=runs))
    assert set(placed(d)) == {"n"}
    fifo = decide(snapshot(nodes, pending, running=runs, config="fifo"))
    assert set(placed(fifo)) == {"v"}


# -- gangs --------------------------------------------------------------------------------


def test_a_gang_is_placed_whole_on_as_few_nodes_as_possible_or_not_at_all():
    nodes = [node("a", free=[1000] * 4 + [0] * 4), node("b"), node("c", free=[1000] * 6 + [0] * 2)]
    d = decide(snapshot(nodes, [job("g", gpus=2, gang=4)]))
    workers = placed(d)["g"]
    assert len(workers) == 4
    assert {n for n, _, _ in workers} == {"b"}
    d = decide(snapshot(nodes, [job("g", gpus=4, gang=5)]))
    assert not d.places
    assert waiting(d)["g"] == (
        "gang of 5 workers cannot be placed at once: the free room holds only 4 of its "
        "workers now"  # a takes 1, b 2, c 1
    )
    d = decide(snapshot(nodes, [job("g", gpus=8, gang=2)]))
    assert waiting(d)["g"] == (
        "gang of 2 workers cannot be placed at once: the free room holds only 1 of its "
        "workers now"  # b
    )
    d = decide(snapshot([nodes[0], nodes[2]], [job("g", gpus=8, gang=2)]))
    assert waiting(d)["g"] == (
        "gang of 2 workers cannot be placed at once: no healthy node has 8 free A100 GPUs "
        "(most free A100 on one node: 6)"
    )


def test_a_spread_gang_that_the_per_node_limit_keeps_out_says_how_many_workers_fit():
    nodes = [node("n0"), node("n1", free=[0] * 8)]
    spread = replace(job("s", gpus=4, gang=2), max_per_node=1)
    d = decide(snapshot(nodes, [spread]))
    assert waiting(d)["s"] == (
        "app s may run at most 1 per node, and the nodes with room take only 1 of its 2 workers so"
    )
    assert "s" in placed(decide(snapshot([node("n0"), node("n1")], [spread])))


# -- head of line -------------------------------------------------------------------------


def test_strict_fifo_lets_nothing_pass_a_blocked_head():
    nodes = [node("n0", free=[1000] * 4 + [0] * 4)]
    pending = [job("head", gpus=8, submit=0), job("small", gpus=1, submit=1)]
    d = decide(snapshot(nodes, pending, config="fifo"))
    assert not d.places
    assert waiting(d)["small"] == "behind head, the blocked head of the queue (strict FIFO)"


@pytest.mark.parametrize("config", ["first-fit", "las", "default"])
def test_skip_places_any_later_work_that_fits(config: str):
    # default holds nothing for a blocked head either (issue 9: holds without duration
    # estimates idled what they held)
    nodes = [node("n0", free=[1000] * 6 + [0] * 2)]
    pending = [job("head", gpus=8, submit=0), job("s", gpus=6, submit=1)]
    d = decide(snapshot(nodes, pending, config=config))
    assert set(placed(d)) == {"s"}
    assert "holding" not in waiting(d)["head"]


# -- packing ------------------------------------------------------------------------------


def test_fractions_are_packed_onto_already_shared_gpus():
    nodes = [node("n0", gpus=2, free=[1000, 1000]), node("n1", gpus=2, free=[600, 1000])]
    d = decide(snapshot(nodes, [job("f", milli=500)]))
    assert placed(d) == {"f": [("n1", (0,), 500)]}


def test_whole_gpu_requests_stay_off_shared_gpus_and_keep_big_holes_whole():
    nodes = [
        node("big", free=[1000] * 8),
        node("mid", free=[1000] * 2 + [0] * 6),
        node("shared", gpus=2, free=[400, 1000]),
    ]
    pending = [job("w", gpus=2, submit=0), job("big8", gpus=8, submit=1)]
    d = decide(snapshot(nodes, pending))
    assert placed(d)["w"] == [("mid", (0, 1), 1000)]
    assert placed(d)["big8"] == [("big", tuple(range(8)), 1000)]


def test_first_fit_takes_the_lowest_index_node():
    nodes = [node("big", free=[1000] * 8), node("mid", free=[1000] * 2 + [0] * 6)]
    d = decide(snapshot(nodes, [job("w", gpus=2)], config="first-fit"))
    assert placed(d)["w"] == [("big", (0, 1), 1000)]


def test_cpu_only_work_goes_to_cpu_only_nodes_first():
    nodes = [node("gpu"), node("cpu", gpus=0)]
    d = decide(snapshot(nodes, [job("c", cpu=4000, mem=1024)]))
    assert placed(d)["c"] == [("cpu", (), 0)]


# -- energy -------------------------------------------------------------------------------


def test_energy_aware_placement_prefers_the_most_efficient_type():
    # The efficient type sorts last by name (A10 < L4) and sits on the second node, so only
    # the power model can make the policy choose it.
    nodes = [
        node("hot", gpu_type="A10", power=PowerModel(40.0, 300.0)),
        node("cool", gpu_type="L4", power=PowerModel(15.0, 72.0)),
    ]
    aware = replace(policy_config("default"), energy_aware=True)
    d = decide(snapshot(nodes, [job("any", gpus=1)], config=aware))
    assert placed(d)["any"][0][0] == "cool"
    plain = replace(policy_config("default"), energy_aware=False)
    d = decide(snapshot(nodes, [job("any", gpus=1)], config=plain))
    assert placed(d)["any"][0][0] == "hot"  # without the option: name order, A10 before L4
    typed = decide(snapshot(nodes, [job("a", gpus=1, gpu_type="A10")], config=aware))
    assert placed(typed)["a"][0][0] == "hot"  # an explicit type wins over efficiency


def test_deferrable_work_waits_for_the_low_carbon_window_but_not_forever():
    cfg = replace(
        policy_config("default"),
        low_carbon_windows=(Window(2 * 3600.0, 5 * 3600.0),),
        max_defer_s=12 * 3600.0,
    )
    pending = [job("d", gpus=1, deferrable=True), job("n", gpus=1, submit=1)]
    d = decide(snapshot([node("n0")], pending, config=cfg, clock=0.0))
    assert set(placed(d)) == {"n"}
    assert waiting(d)["d"].startswith("deferrable: held for the low-carbon window at 02:00")
    assert d.recheck_at == 2 * 3600.0
    inside = decide(snapshot([node("n0")], pending, config=cfg, clock=3 * 3600.0))
    assert set(placed(inside)) == {"d", "n"}
    late = decide(snapshot([node("n0")], pending, config=cfg, clock=13 * 3600.0))
    assert set(placed(late)) == {"d", "n"}


@pytest.mark.parametrize(
    ("clock", "opens", "anyway"),
    [
        (0.0, "2h 00m", "12h 00m"),
        (3600.0, "1h 00m", "11h 00m"),  # exactly an hour
        (3601.0, "59m 59s", "10h 59m"),
        (7140.0, "1m 00s", "10h 01m"),  # exactly a minute
        (7141.0, "59s", "10h 00m"),
        (7199.5, "0s", "10h 00m"),  # part of a second counts as none
    ],
)
def test_a_held_deferrable_workload_says_when_the_window_opens_and_when_it_runs_anyway(
    clock, opens, anyway
):
    cfg = replace(
        policy_config("default"),
        low_carbon_windows=(Window(6 * 3600.0, 7 * 3600.0), Window(2 * 3600.0, 5 * 3600.0)),
        max_defer_s=12 * 3600.0,
    )
    d = decide(snapshot([node("n0")], [job("d", gpus=1, deferrable=True)], config=cfg, clock=clock))
    assert waiting(d)["d"] == (
        f"deferrable: held for the low-carbon window at 02:00 (opens in {opens}; runs anyway "
        f"{anyway} from now)"
    )


@pytest.mark.parametrize(
    ("window", "clock", "shown"),
    [
        (Window(2.5 * 3600.0, 5 * 3600.0), 0.0, "02:30 (opens in 2h 30m;"),
        (Window(23 * 3600.0 + 59 * 60.0, 3600.0), 0.0 + 3 * 3600.0, "23:59 (opens in 20h 59m;"),
        (Window(24 * 3600.0, 5 * 3600.0), 20 * 3600.0, "00:00 (opens in 4h 00m;"),  # 24:00
    ],
)
def test_a_held_deferrable_workload_names_the_window_by_hour_and_minute(window, clock, shown):
    cfg = replace(policy_config("default"), low_carbon_windows=(window,), max_defer_s=86400.0)
    d = decide(snapshot([node("n0")], [job("d", gpus=1, deferrable=True)], config=cfg, clock=clock))
    assert waiting(d)["d"].startswith(f"deferrable: held for the low-carbon window at {shown}")


def test_deferrable_work_runs_at_its_deadline_exactly():
    cfg = replace(
        policy_config("default"),
        low_carbon_windows=(Window(2 * 3600.0, 5 * 3600.0),),
        max_defer_s=3600.0,
    )
    pending = [job("d", gpus=1, deferrable=True, submit=100.0)]
    before = decide(snapshot([node("n0")], pending, config=cfg, clock=3699.0))
    assert waiting(before)["d"].endswith("(opens in 58m 21s; runs anyway 1s from now)")
    assert "d" in placed(decide(snapshot([node("n0")], pending, config=cfg, clock=3700.0)))


# -- least attained service ---------------------------------------------------------------


def test_las_preempts_work_that_has_received_more_service():
    long_run = running_on(job("long", "a", gpus=8), [("n0", tuple(range(8)))], started=0.0)
    nodes = occupy([node("n0")], [long_run])
    d = decide(
        snapshot(
            nodes,
            [job("new", "b", gpus=8, submit=900)],
            running=[long_run],
            config="las",
            clock=1000.0,
        )
    )
    assert [p.workload_id for p in d.preempts] == ["long"]
    assert d.preempts[0].reason == (
        "long has received 2.2 accelerator-hours (service level 1); new is at level 0"
    )


def test_las_reports_attained_service_in_accelerator_hours_of_3600_seconds():
    long_run = running_on(job("long", "a", gpus=8), [("n0", tuple(range(8)))], started=0.0)
    snap = snapshot(
        occupy([node("n0")], [long_run]),
        [job("new", "b", gpus=8, submit=900)],
        running=[long_run],
        config="las",
        clock=922.75,  # 7,382 accelerator-seconds: 2.0506 hours (2.0499 if an hour were 3,601 s)
    )
    assert decide(snap).preempts[0].reason == (
        "long has received 2.1 accelerator-hours (service level 1); new is at level 0"
    )


def test_a_claimant_may_preempt_for_exactly_the_cpus_and_memory_its_victims_free():
    victims = [
        running_on(job(f"low{i}", gpus=4, cpu=32_000, mem=256 * 1024), [("n0", gpus)])
        for i, gpus in enumerate([(0, 1, 2, 3), (4, 5, 6, 7)])
    ]
    nodes = occupy([node("n0")], victims)
    high = job("high", gpus=8, cpu=64_000, mem=512 * 1024, priority=5)
    d = decide(snapshot(nodes, [high], running=victims, clock=500.0))
    assert sorted(p.workload_id for p in d.preempts) == ["low0", "low1"]


def test_work_without_accelerators_preempts_by_priority_too():
    low = running_on(job("low", cpu=64_000), [("n0", ())], gpu_type=None)
    nodes = occupy([node("n0", gpus=0)], [low])
    d = decide(snapshot(nodes, [job("high", cpu=64_000, priority=5)], running=[low], clock=500.0))
    assert [p.workload_id for p in d.preempts] == ["low"]


def test_service_levels_never_preempt_another_projects_work_within_its_guarantee():
    """``default`` ranks by service level inside a project and, across projects, only work
    that borrows: another project's long job inside its guarantee is no victim."""
    quotas = [Quota("a", "A100", 8), Quota("b", "A100", 8)]
    own = running_on(job("own", "a", gpus=8), [("n0", tuple(range(8)))], started=3000.0)
    theirs = running_on(job("theirs", "b", gpus=8), [("n1", tuple(range(8)))], started=0.0)
    runs = [own, theirs]
    nodes = occupy([node("n0"), node("n1")], runs)
    claimant = job("new", "a", gpus=8, submit=3000.0)
    d = decide(snapshot(nodes, [claimant], running=runs, quotas=quotas, clock=40_000.0))
    assert not d.preempts
    assert "new" in waiting(d)


def test_las_says_when_a_running_workload_becomes_preemptible():
    run = running_on(job("r", "a", gpus=1), [("n0", (0,))], started=0.0)
    nodes = occupy([node("n0", gpus=1)], [run])
    d = decide(snapshot(nodes, [job("new", "b", gpus=1)], running=[run], config="las", clock=100.0))
    assert not d.preempts
    assert d.recheck_at == 3600.0  # r crosses the first service threshold (1 GPU-hour) then


# -- the function itself ------------------------------------------------------------------


def test_every_pending_workload_gets_exactly_one_decision_and_the_same_input_the_same_output():
    nodes = [node(f"n{i}", free=[1000] * (i % 9) + [0] * (8 - i % 9)) for i in range(6)]
    pending = [job(f"w{i}", f"p{i % 3}", gpus=1 + i % 8, submit=float(i)) for i in range(30)]
    quotas = [Quota(f"p{i}", "A100", 8) for i in range(3)]
    snap = snapshot(nodes, pending, quotas=quotas)
    first = decide(snap)
    assert first == decide(snap)
    ids = [p.workload_id for p in first.places] + list(waiting(first)) + list(rejected(first))
    assert sorted(ids) == sorted(w.id for w in pending)
    assert all(reason for reason in waiting(first).values())


def test_an_inconsistent_snapshot_is_an_error():
    with pytest.raises(InvalidInput, match="node 'n0' appears twice"):
        decide(snapshot([node("n0"), node("n0")]))
    with pytest.raises(InvalidInput, match="workload 'w' appears twice"):
        decide(snapshot([node("n0")], [job("w"), job("w")]))


def test_unknown_policy_name_is_an_error():
    with pytest.raises(InvalidInput, match="unknown policy 'best'; choose one of: default, fifo"):
        policy_config("best")


def test_work_that_is_not_preemptible_is_never_a_victim_and_never_borrows():
    quotas = [Quota("vision", "A100", 8), Quota("nlp", "A100", 8)]
    service = replace(job("svc", "nlp", gpus=8), preemptible=False)
    runs = [running_on(service, [("n0", tuple(range(8)))])]
    nodes = occupy([node("n0")], runs)
    high = job("high", "nlp", gpus=8, priority=9)
    d = decide(snapshot(nodes, [high], running=runs, clock=500.0))  # past min_runtime_s
    assert not d.preempts
    spare = [node("n0"), node("n1")]
    lone = replace(job("svc2", "vision", gpus=8, submit=1), preemptible=False)
    d = decide(snapshot(spare, [job("v", gpus=8), lone], quotas=quotas))
    assert set(placed(d)) == {"v"}
    assert waiting(d)["svc2"] == (
        "project vision uses 8 of its 8 guaranteed A100; not preemptible, so it may not borrow"
    )


# -- constraints: node selectors, per-node spread, protection --------------------------------


def _labelled(n, *labels: str):
    return replace(n, labels=labels)


@pytest.mark.parametrize("config", sorted(POLICIES))
def test_a_selector_no_node_matches_waits_with_the_labels_it_wants(config: str) -> None:
    nodes = [_labelled(node("a", gpus=2), "gpu=t4"), node("b", gpus=2)]
    w = replace(job("svc", milli=500), node_selector=("gpu=a100",))
    d = decide(snapshot(nodes, [w], config=config))
    assert not d.places and not d.rejects
    assert waiting(d)["svc"].startswith("no node with labels gpu=a100")


def test_a_selector_places_only_on_nodes_carrying_every_label() -> None:
    nodes = [
        _labelled(node("a", gpus=2), "zone=a"),
        _labelled(node("b", gpus=2), "gpu=a100", "zone=b"),
        _labelled(node("c", gpus=2), "gpu=a100", "zone=a"),
    ]
    w = replace(job("svc", gpus=1, gang=2), node_selector=("gpu=a100", "zone=a"))
    d = decide(snapshot(nodes, [w]))
    assert placed(d) == {"svc": [("c", (0,), 1000), ("c", (1,), 1000)]}


def test_max_per_node_spreads_an_app_counting_what_already_runs() -> None:
    web0 = replace(job("web-0", milli=250), app="web", max_per_node=2)
    nodes = [node("a", gpus=4), node("b", gpus=4), node("c", gpus=4)]
    run = running_on(web0, [("a", (0,))])
    w = replace(job("web-1", milli=250, gang=4), app="web", max_per_node=2)
    d = decide(snapshot(occupy(nodes, [run]), [w], running=[run]))
    per_node: dict[str, int] = {}
    for n, _, _ in placed(d)["web-1"]:
        per_node[n] = per_node.get(n, 0) + 1
    assert per_node == {"a": 1, "b": 2, "c": 1}


def test_an_app_at_its_limit_on_every_fitting_node_says_so() -> None:
    nodes = [node("a", gpus=4), node("b", gpus=4)]
    runs = [
        running_on(replace(job(f"web-{i}", milli=250), app="web", max_per_node=2), [(n, (i,))])
        for i, n in enumerate(["a", "a", "b", "b"])
    ]
    w = replace(job("web-9", milli=250), app="web", max_per_node=2)
    d = decide(snapshot(occupy(nodes, runs), [w], running=runs))
    assert waiting(d)["web-9"] == "app web already has 2 of 2 workers on every fitting node"


def test_one_round_does_not_place_more_of_an_app_on_a_node_than_its_limit() -> None:
    ws = [replace(job(f"api-{i}", milli=100), app="api", max_per_node=1) for i in range(3)]
    d = decide(snapshot([node("a", gpus=1), node("b", gpus=1)], ws))
    nodes_used = sorted(p.workers[0].node for p in d.places)
    assert nodes_used == ["a", "b"]
    assert "app api already has 1 of 1 workers" in waiting(d)["api-2"]


def test_a_max_per_node_below_one_is_rejected() -> None:
    w = replace(job("bad", milli=100), max_per_node=0)
    d = decide(snapshot([node("a", gpus=1)], [w]))
    assert rejected(d) == {"bad": "max_per_node must be at least 1 (got 0)"}


def test_constrained_work_preempts_only_where_it_may_run() -> None:
    # Two low-priority jobs; low-0 (started last) would be the first victim, but only n1
    # carries the label the claimant selects.
    runs = [
        running_on(job("low-0", gpus=8), [("n0", tuple(range(8)))], started=10.0),
        running_on(job("low-1", gpus=8, submit=1), [("n1", tuple(range(8)))], started=0.0),
    ]
    nodes = occupy([node("n0"), node("n1")], runs)
    nodes = (nodes[0], _labelled(nodes[1], "zone=a"))
    high = replace(job("high", gpus=8, priority=5), node_selector=("zone=a",))
    d = decide(snapshot(nodes, [high], running=runs, clock=500.0))
    assert [(p.workload_id, p.for_workload) for p in d.preempts] == [("low-1", "high")]
    assert d.claims[0].nodes == ("n1",)


def test_constrained_work_never_preempts_for_room_it_could_not_use() -> None:
    # The only zone=a node already runs the app's one allowed worker: freeing any room
    # there (or anywhere else) cannot start it, so nothing is preempted.
    web = replace(job("web-0", milli=500, priority=9), app="web", max_per_node=1)
    runs = [
        running_on(web, [("n0", (0,))]),
        running_on(job("low", gpus=7), [("n0", tuple(range(1, 8)))]),
        running_on(job("other", gpus=8), [("n1", tuple(range(8)))]),
    ]
    n0, n1 = occupy([node("n0"), node("n1")], runs)
    nodes = [_labelled(n0, "zone=a"), n1]
    more = replace(
        job("web-1", gpus=1, priority=5), app="web", max_per_node=1, node_selector=("zone=a",)
    )
    d = decide(snapshot(nodes, [more], running=runs, clock=500.0))
    assert not d.preempts and not d.claims
    assert waiting(d)["web-1"].startswith("no node with labels zone=a has room: ")


def test_a_constrained_head_holds_only_where_it_may_run() -> None:
    runs = [
        running_on(job("r0", gpus=6), [("n0", tuple(range(6)))]),
        running_on(job("r1", gpus=6), [("n1", tuple(range(6)))]),
    ]
    nodes = occupy([node("n0"), node("n1")], runs)
    nodes = (nodes[0], _labelled(nodes[1], "zone=a"))
    head = replace(job("head", gpus=4), node_selector=("zone=a",))
    small = [job(f"s{i}", gpus=1, submit=1 + i) for i in range(4)]
    d = decide(snapshot(nodes, [head, *small], running=runs, config="fifo-backfill"))
    assert "holding what it needs on node n1" in waiting(d)["head"]
    # n1's two free GPUs are held for the head; n0's two go to later work.
    assert sorted(w[0] for p in placed(d).values() for w in p) == ["n0", "n0"]
