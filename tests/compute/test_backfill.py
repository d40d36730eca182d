"""Backfill (policy ``fifo-backfill``): a blocked head of the queue holds what it needs, and
later work takes only what is left."""

from __future__ import annotations

from underlay.compute.scheduler import decide

from .builders import job, node, occupy, placed, running_on, snapshot, waiting


def test_backfill_uses_other_nodes_but_never_the_nodes_held_for_the_head():
    nodes = [node("n0", free=[1000] * 6 + [0] * 2), node("n1", free=[1000] * 2 + [0] * 6)]
    pending = [
        job("head", gpus=8, submit=0),
        job("s1", gpus=2, submit=1),
        job("s2", gpus=2, submit=2),
    ]
    d = decide(snapshot(nodes, pending, config="fifo-backfill"))
    assert placed(d) == {"s1": [("n1", (0, 1), 1000)]}
    assert "holding what it needs on node n0 so later work cannot delay it" in waiting(d)["head"]
    assert waiting(d)["s2"].endswith("besides what is held for head")


def test_backfill_keeps_off_a_shared_gpu_the_blocked_head_will_need() -> None:
    # Found by test_backfill_never_delays_the_head: the head held only idle GPUs, so a 0.1-GPU
    # job took the shared GPU 0 that the head needs once r0 ends.
    runs = [running_on(job("r0", milli=100), [("n0", (0,))])]
    nodes = occupy([node("n0", gpus=2)], runs)
    pending = [job("head", gpus=2, submit=0.0), job("small", milli=100, submit=1.0)]
    d = decide(snapshot(nodes, pending, running=runs, config="fifo-backfill"))
    assert not d.places
    assert "first in line: holding what it needs on node n0" in waiting(d)["head"]


def test_a_gang_head_holds_enough_nodes_counting_only_healthy_gpus() -> None:
    # Found by test_backfill_never_delays_the_head: n0 has 8 GPUs of which 4 are unhealthy;
    # counted as 8, n0 alone seemed to host both 4-GPU workers, only n0 was held, and a
    # 0.1-GPU job took n1's shared GPU 0, which the head's second worker needs once r0 ends.
    runs = [running_on(job("r0", milli=100), [("n1", (0,))])]
    nodes = occupy([node("n0", unhealthy_gpus=range(4)), node("n1", gpus=4)], runs)
    pending = [job("head", gpus=4, gang=2, submit=0.0), job("small", milli=100, submit=1.0)]
    d = decide(snapshot(nodes, pending, running=runs, config="fifo-backfill"))
    assert "first in line: holding what it needs on nodes n0, n1" in waiting(d)["head"]
    assert not d.places
