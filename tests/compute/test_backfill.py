"""Backfill (policy ``fifo-backfill``): a blocked head of the queue holds what it needs, and
later work takes only what is left."""

from __future__ import annotations

from underlay.compute.scheduler import Node, decide

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


def _shared(*frees: int) -> list[object]:
    """Tenants that leave GPU g of n0 with ``frees[g]`` thousandths free."""
    return [
        running_on(job(f"t{g}", milli=1000 - f), [("n0", (g,))])
        for g, f in enumerate(frees)
        if f < 1000
    ]


def _backfill_on_shared(frees: tuple[int, ...], pending: list, **n0: int):
    """``pending`` under ``fifo-backfill`` on node n0 whose GPUs have ``frees`` left."""
    runs = _shared(*frees)
    nodes = occupy([node("n0", gpus=len(frees), **n0)], runs)
    return decide(snapshot(nodes, pending, running=runs, config="fifo-backfill"))


def test_a_blocked_fractional_head_holds_the_share_of_the_gpu_with_most_left_free() -> None:
    pending = [job("head", milli=600, submit=0.0), job("small", milli=300, submit=1.0)]
    d = _backfill_on_shared((400, 500, 300), pending)
    # GPU 1 (0.5 free) is held for the head; the small job takes the tightest fit left,
    # GPU 2 (holding GPU 2 instead would send it to GPU 0)
    assert placed(d) == {"small": [("n0", (2,), 300)]}
    assert "holding what it needs on node n0" in waiting(d)["head"]


def test_a_blocked_fractional_gang_holds_one_share_per_worker_on_different_gpus() -> None:
    pending = [
        job("head", milli=600, gang=2, submit=0.0),
        job("a", milli=300, submit=1.0),
        job("b", milli=200, submit=2.0),
    ]
    d = _backfill_on_shared((400, 500, 300, 200), pending)
    # GPUs 1 and 0 are held (0.5 and 0.4 free): a takes GPU 2 (0.3), b GPU 3 (0.2)
    assert placed(d) == {"a": [("n0", (2,), 300)], "b": [("n0", (3,), 200)]}


def test_a_fractional_head_holds_at_most_its_share_of_a_gpu() -> None:
    runs = _shared(900)
    nodes = occupy([node("n0", gpus=1), node("n1", gpus=1, free=[0])], runs)
    pending = [job("head", milli=1000, submit=0.0), job("small", milli=300, submit=1.0)]
    d = decide(snapshot(nodes, pending, running=runs, config="fifo-backfill"))
    # the head (a whole GPU as a share) holds all 0.9 of GPU 0: nothing is left to take
    assert not d.places


def test_a_fractional_gang_head_holds_what_is_free_when_fewer_gpus_have_room_than_workers():
    runs = _shared(400, 500, 0, 0)
    nodes = occupy([node("n0", gpus=4)], runs)
    d = decide(
        snapshot(nodes, [job("head", milli=600, gang=3)], running=runs, config="fifo-backfill")
    )
    assert "holding what it needs on node n0" in waiting(d)["head"]


def test_a_held_share_takes_no_cpu_or_memory_the_head_did_not_ask_for():
    pending = [
        job("head", milli=600, submit=0.0),
        job("all", milli=300, cpu=8000, mem=16 * 1024, submit=1.0),  # every CPU and MiB
    ]
    d = _backfill_on_shared((400, 500, 300), pending, cpu=8, mem_gib=16)
    assert placed(d) == {"all": [("n0", (2,), 300)]}


def test_a_fractional_gang_head_counts_down_each_gpu_it_holds_shares_on():
    pending = [
        job("head", milli=600, gang=3, submit=0.0),
        job("small", milli=200, submit=1.0),
        job("half", milli=500, submit=2.0),
    ]
    d = _backfill_on_shared((900, 500, 200), pending)
    # held: 0.6 then 0.3 of GPU 0 and 0.5 of GPU 1; GPU 2 is left to the small job
    assert placed(d) == {"small": [("n0", (2,), 200)]}
    assert "half" in waiting(d)


def test_a_fractional_head_holds_shares_of_its_own_accelerator_type_only():
    a100, t4 = node("a", gpus=1, free=[500]).accelerators[0], node("t", gpus=1, gpu_type="T4")
    mixed = Node.idle("n0", 64_000, 512 * 1024, (a100, t4.accelerators[0]))
    pending = [
        job("head", milli=600, gpu_type="A100", submit=0.0),
        job("t4", milli=600, gpu_type="T4", submit=1.0),
    ]
    d = decide(snapshot([mixed], pending, config="fifo-backfill"))
    assert placed(d) == {"t4": [("n0", (1,), 600)]}


def test_a_fractional_head_holds_even_the_last_thousandth_of_a_gpu():
    pending = [job("head", milli=600, submit=0.0), job("speck", milli=1, submit=1.0)]
    d = _backfill_on_shared((1,), pending)
    assert not d.places and "speck" in waiting(d)
