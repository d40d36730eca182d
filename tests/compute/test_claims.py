"""A claim's second half: once its victims are gone, the claimant starts on the room held for
it, or the claim is abandoned with the reason (``_Round._start_claimant``)."""

from __future__ import annotations

from dataclasses import replace

from underlay.compute.scheduler import Claim, Decisions, Quota, decide

from .builders import job, node, occupy, placed, running_on, snapshot, waiting

QUOTAS = [Quota("vision", "A100", 8), Quota("nlp", "A100", 8)]
NO_FIT = "no healthy node has 8 free A100 GPUs (most free A100 on one node: 4)"


def _decide(nodes, pending, claims, running=(), quotas=QUOTAS) -> Decisions:
    runs = list(running)
    snap = snapshot(occupy(nodes, runs), pending, running=runs, quotas=quotas, clock=600.0)
    return decide(replace(snap, claims=tuple(claims)))


def _claim(wid: str, *nodes: str) -> Claim:
    return Claim(wid, ("gone",), nodes, "A100", 500.0)


def _abandoned(d: Decisions) -> dict[str, str]:
    return {a.workload_id: a.reason for a in d.abandoned}


def test_a_claimant_within_its_guarantee_starts_on_the_node_held_for_it():
    nodes = [node("n0"), node("n1")]
    d = _decide(nodes, [job("v", gpus=8)], [_claim("v", "n1")])
    assert placed(d) == {"v": [("n1", tuple(range(8)), 1000)]}
    (place,) = d.places
    assert place.gpu_type == "A100" and place.borrowed is False
    assert not d.abandoned and not d.claims and not d.preempts


def test_a_preemptible_claimant_above_its_guarantee_starts_as_borrowed_work():
    mine = running_on(job("mine", gpus=8), [("n0", tuple(range(8)))])
    nodes = [node("n0"), node("n1"), node("n2")]
    d = _decide(nodes, [job("v", gpus=8)], [_claim("v", "n2")], running=[mine])
    assert placed(d) == {"v": [("n2", tuple(range(8)), 1000)]}
    assert d.places[0].borrowed is True
    assert not d.abandoned


def test_a_claimant_that_may_not_borrow_any_more_abandons_its_claim_and_preempts_no_more():
    mine = running_on(job("mine", gpus=8), [("n0", tuple(range(8)))])
    other = running_on(job("other", "nlp", gpus=8), [("n1", tuple(range(8)))], started=0.0)
    nodes = [node("n0"), node("n1"), node("n2")]
    fixed = replace(job("v", gpus=8), preemptible=False)
    d = _decide(nodes, [fixed], [_claim("v", "n2")], running=[mine, other])
    assert _abandoned(d) == {
        "v": "project vision uses 8 of its 8 guaranteed A100; it may no longer take the room "
        "held for it"
    }
    assert d.abandoned[0].victims == ("gone",)
    assert "v" not in placed(d) and "v" in waiting(d)
    assert not d.preempts


def test_a_claimant_at_its_borrow_limit_abandons_its_claim_naming_the_limit():
    quotas = [Quota("vision", "A100", 8, borrow_limit=4), Quota("nlp", "A100", 8)]
    mine = running_on(job("mine", gpus=8), [("n0", tuple(range(8)))])
    nodes = [node("n0"), node("n1")]
    d = _decide(nodes, [job("v", gpus=8)], [_claim("v", "n1")], running=[mine], quotas=quotas)
    assert _abandoned(d) == {
        "v": "project vision uses 8 of its 8 guaranteed A100 (may borrow 4 more); it may no "
        "longer take the room held for it"
    }
    assert "v" not in placed(d)


def test_a_claimant_whose_held_node_was_taken_starts_elsewhere():
    squatter = running_on(job("squatter", "nlp", gpus=8), [("n1", tuple(range(8)))])
    nodes = [node("n0"), node("n1")]
    d = _decide(nodes, [job("v", gpus=8)], [_claim("v", "n1")], running=[squatter])
    assert placed(d) == {"v": [("n0", tuple(range(8)), 1000)]}
    assert d.places[0].borrowed is False
    assert not d.abandoned


def test_a_claimant_with_no_room_left_anywhere_abandons_its_claim_with_the_reason():
    squatter = running_on(job("squatter", "nlp", gpus=4), [("n0", (0, 1, 2, 3))])
    nodes = [node("n0")]
    d = _decide(nodes, [job("v", gpus=8)], [_claim("v", "n0")], running=[squatter])
    assert _abandoned(d) == {"v": "the room freed for it is gone: " + NO_FIT}
    assert "v" not in placed(d)


def test_a_gang_claimant_starts_all_its_workers_on_the_nodes_held_for_it():
    nodes = [node("n0"), node("n1"), node("n2")]
    gang = job("g", gpus=8, gang=2)
    d = _decide(nodes, [gang], [_claim("g", "n1", "n2")], quotas=[Quota("vision", "A100", 16)])
    assert placed(d) == {"g": [("n1", tuple(range(8)), 1000), ("n2", tuple(range(8)), 1000)]}


def test_a_gang_claimant_whose_held_nodes_hold_only_part_of_it_is_placed_whole_elsewhere():
    squatter = running_on(job("squatter", "nlp", gpus=8), [("n2", tuple(range(8)))])
    nodes = [node("n0"), node("n1"), node("n2")]
    gang = job("g", gpus=8, gang=2)
    quotas = [Quota("vision", "A100", 16), Quota("nlp", "A100", 8)]
    d = _decide(nodes, [gang], [_claim("g", "n1", "n2")], running=[squatter], quotas=quotas)
    assert sorted(w[0] for w in placed(d)["g"]) == ["n0", "n1"]
    assert not d.abandoned


def test_a_spread_claimant_starts_one_worker_per_node_held_for_it():
    nodes = [node("n0"), node("n1"), node("n2")]
    spread = replace(job("s", gpus=4, gang=2), max_per_node=1)
    d = _decide(nodes, [spread], [_claim("s", "n1", "n2")], quotas=[Quota("vision", "A100", 16)])
    assert sorted(w[0] for w in placed(d)["s"]) == ["n1", "n2"]
    assert not d.abandoned


def test_a_spread_claimant_with_too_few_nodes_left_abandons_its_claim_with_the_reason():
    squatter = running_on(job("squatter", "nlp", gpus=8), [("n1", tuple(range(8)))])
    nodes = [node("n0"), node("n1")]
    spread = replace(job("s", gpus=4, gang=2), max_per_node=1)
    d = _decide(nodes, [spread], [_claim("s", "n0", "n1")], running=[squatter])
    assert _abandoned(d) == {
        "s": "the room freed for it is gone: app s may run at most 1 per node, and the nodes "
        "with room take only 1 of its 2 workers so"
    }


def test_borrowers_like_one_that_failed_fail_alike_until_their_project_places_more():
    """The borrow pass remembers a failed borrower's verdict for work of the same shape,
    project, class and usage; a placement of the project changes its usage and so the
    verdict's key (the reason then quotes the new figures)."""
    mine = running_on(job("mine", gpus=8), [("n0", tuple(range(8)))])
    theirs = running_on(job("theirs", "nlp", gpus=6), [("n1", tuple(range(6)))], started=0.0)
    nodes = [node("n0"), node("n1")]
    pending = [
        job("b1", gpus=4, submit=1.0),
        job("b2", gpus=2, submit=2.0),  # fits the 2 idle GPUs of n1
        job("b3", gpus=4, submit=3.0),
        job("b4", gpus=4, submit=4.0),
        job("b5", gpus=4, submit=5.0),
    ]
    d = _decide(
        nodes, pending, [], running=[mine, theirs], quotas=[*QUOTAS[:1], Quota("nlp", "A100", 8)]
    )
    assert placed(d) == {"b2": [("n1", (6, 7), 1000)]}
    assert d.places[0].borrowed is True
    # (a capacity reason is written once per shape in a round: it quotes the cluster then)
    no_idle = (
        "; no idle A100 to borrow (no healthy node has 4 free A100 GPUs (most free A100 on "
        "one node: 2))"
    )
    assert waiting(d) == {
        "b1": "project vision uses 8 of its 8 guaranteed A100" + no_idle,
        "b3": "project vision uses 10 of its 8 guaranteed A100" + no_idle,
        "b4": "project vision uses 10 of its 8 guaranteed A100" + no_idle,
        "b5": "project vision uses 10 of its 8 guaranteed A100" + no_idle,
    }


def test_non_preemptible_work_starts_up_to_its_projects_guarantee_exactly():
    """A gang counts all its workers against the guarantee; work that may not be preempted
    never borrows."""
    quotas = [Quota("vision", "A100", 8), Quota("nlp", "A100", 8)]
    nodes = [node("n0"), node("n1")]
    exact = replace(job("exact", gpus=4, gang=2), preemptible=False)
    d = _decide(nodes, [exact], [], quotas=quotas)
    assert len(placed(d)["exact"]) == 2  # 2 x 4 = its 8 guaranteed GPUs
    assert d.places[0].borrowed is False
    over = replace(job("over", gpus=4, gang=2), preemptible=False)
    small = [Quota("vision", "A100", 6), Quota("nlp", "A100", 10)]
    d = _decide(nodes, [over], [], quotas=small)
    assert "over" not in placed(d) and "over" in waiting(d)


def test_borrowers_of_one_project_borrow_in_turn():
    """One project: no fair share between projects; its borrowers still go one by one."""
    mine = running_on(job("mine", gpus=8), [("n0", tuple(range(8)))])
    nodes = [node("n0"), node("n1", gpus=4)]
    pending = [
        job("b1", gpus=8, submit=1.0),  # no idle 8
        job("b2", gpus=4, submit=2.0),
        job("b3", gpus=8, submit=3.0),
        job("b4", gpus=4, submit=4.0),
    ]
    d = _decide(nodes, pending, [], running=[mine], quotas=[Quota("vision", "A100", 8)])
    assert placed(d) == {"b2": [("n1", (0, 1, 2, 3), 1000)]}
    assert d.places[0].borrowed is True
    assert waiting(d)["b1"].startswith("project vision uses 8 of its 8 guaranteed A100; ")
    assert waiting(d)["b4"].startswith("project vision uses 12 of its 8 guaranteed A100; ")


def test_borrowers_of_every_project_get_their_turn():
    runs = [
        running_on(job("v", "vision", gpus=8), [("n0", tuple(range(8)))]),
        running_on(job("n", "nlp", gpus=8), [("n1", tuple(range(8)))]),
    ]
    nodes = [node("n0"), node("n1"), node("n2")]
    pending = [
        job("vb1", "vision", gpus=2, submit=1.0),
        job("vb2", "vision", gpus=2, submit=2.0),
        job("nb1", "nlp", gpus=2, submit=3.0),
        job("nb2", "nlp", gpus=2, submit=4.0),
        job("vb3", "vision", gpus=4, submit=5.0),
    ]
    d = _decide(nodes, pending, [], running=runs)
    assert set(placed(d)) == {"vb1", "vb2", "nb1", "nb2"}
    assert all(p.borrowed for p in d.places)
    assert set(waiting(d)) == {"vb3"}
