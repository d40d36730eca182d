"""The trace simulator: hand-checked replays, preemption, fill mode, determinism."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from underlay.compute.scheduler import Quota, Request, Workload, policy_config
from underlay.compute.simulator import Simulation, Trace, TraceJob, simulate
from underlay.compute.simulator.cluster import parse_spec, quotas_from_weights
from underlay.errors import InvalidInput


def _job(
    wid: str,
    submit: float,
    duration: float | None,
    gpus: int = 1,
    project: str = "p",
    gang: int = 1,
) -> TraceJob:
    w = Workload(wid, project, Request(gpus=gpus), gang=gang, submit_time=submit)
    return TraceJob(w, duration)


def _run(trace: Trace, spec: str, policy: str = "fifo", quotas: tuple[Quota, ...] = (), **kw):
    return Simulation(trace, parse_spec(spec), quotas, policy_config(policy), **kw).run()


def test_a_small_replay_gives_the_figures_worked_out_by_hand():
    trace = Trace.of("t", [_job("a", 0, 100), _job("b", 0, 100), _job("c", 10, 50)])
    r = _run(trace, "2x1xA100", interval_s=0)
    # a and b run 0..100; c waits from 10 to 100 and runs to 150.
    assert (r.finished, r.rejected, r.unfinished) == (3, 0, 0)
    assert r.avg_jct_s == pytest.approx((100 + 100 + 140) / 3)
    assert r.median_jct_s == 100
    assert r.p95_jct_s == pytest.approx(100 + 0.9 * 40)
    assert r.avg_queue_s == pytest.approx(30)
    assert r.makespan_s == 150
    assert r.gpu_utilization == pytest.approx(250 / 300)
    # 2 A100 idle at 50 W for 150 s, plus 350 W more over 250 busy GPU-seconds.
    assert r.energy_kwh == pytest.approx((2 * 50 * 150 + 350 * 250) / 3.6e6)
    assert r.jain_fairness == pytest.approx(1.0)
    assert r.preemptions == 0


def test_the_report_gives_the_offered_load_in_total_and_per_week():
    week = 7 * 86400.0
    jobs = [_job("a", 0, 3600, gpus=2), _job("b", week + 100, 7200), _job("c", week + 200, None)]
    r = _run(Trace.of("t", jobs), "1x4xA100")
    # 2 x 3600 + 1 x 7200 GPU-seconds (c runs to the end: left out) over 4 GPUs and the
    # arrivals' span; per week, each week's arrivals over 4 GPUs for 7 days.
    assert r.offered_load == pytest.approx(14400 / (4 * (week + 200)))
    assert r.offered_load_weekly == pytest.approx((7200 / (4 * week), 7200 / (4 * week)))
    burst = _run(Trace.of("t", [_job("a", 0, 60), _job("b", 0, 60)]), "1x4xA100")
    assert burst.offered_load is None and burst.offered_load_weekly == pytest.approx(
        (120 / (4 * week),)
    )


def test_a_scheduling_tick_delays_starts_to_the_next_tick():
    trace = Trace.of("t", [_job("a", 5, 100)])
    r = _run(trace, "1x1xA100", interval_s=60)
    assert r.avg_queue_s == 55
    assert r.avg_jct_s == 155


def test_requests_no_node_can_hold_are_counted_as_rejected():
    trace = Trace.of("t", [_job("big", 0, 10, gpus=9), _job("ok", 0, 10)])
    r = _run(trace, "1x8xA100", interval_s=0)
    assert (r.finished, r.rejected) == (1, 1)


def test_the_owner_reclaims_borrowed_gpus_and_the_victim_resumes_later():
    jobs = [
        _job("borrow", 0, 1000, gpus=4, project="a"),
        _job("mine", 0, 1000, gpus=4, project="a"),
        _job("own", 100, 100, gpus=4, project="b"),
    ]
    quotas = quotas_from_weights(parse_spec("2x4xA100"), [("a", 1.0), ("b", 1.0)])
    r = _run(Trace.of("t", jobs), "2x4xA100", "default", quotas, interval_s=0)
    assert r.preemptions == 1
    assert r.finished == 3
    # own waits for the 30 s grace period; borrow loses 60 s of work on restart and resumes
    # when own is done: own 100+30..230, borrow has 1000-130+60 = 930 s left from 230.
    assert r.makespan_s == pytest.approx(230 + 930)


def test_reclaim_never_takes_more_than_the_project_borrows_even_for_a_gang():
    # a borrows 4 GPUs, but as half of one 8-GPU gang: stopping it would take 8 from a, 4 of
    # them within its guarantee, so b waits for idle capacity instead.
    jobs = [
        _job("borrow", 0, 1000, gpus=4, project="a", gang=2),
        _job("own", 100, 100, gpus=4, project="b"),
    ]
    quotas = quotas_from_weights(parse_spec("2x4xA100"), [("a", 1.0), ("b", 1.0)])
    r = _run(Trace.of("t", jobs), "2x4xA100", "default", quotas, interval_s=0)
    assert r.preemptions == 0
    assert r.finished == 2 and r.makespan_s == pytest.approx(1100)


def test_a_hold_until_the_end_replay_reports_what_could_not_be_allocated():
    jobs = [_job(f"j{i}", i, None, gpus=3) for i in range(3)] + [_job("late", 10, None, gpus=0)]
    r = _run(Trace.of("fill", jobs), "2x4xA100", "first-fit", interval_s=0)
    assert r.finished == 0 and r.unfinished == 4
    assert r.avg_jct_s is None
    assert r.unallocated_gpus == 2  # two jobs of 3 on two 4-GPU nodes; the third never fits
    # From t=2 to t=10 the two free GPUs cannot take the waiting 3-GPU job: 2 of 8 GPUs for
    # 8 of the 10 seconds.
    assert r.fragmentation == pytest.approx(2 / 8 * 8 / 10)


def test_the_same_inputs_give_the_same_report():
    jobs = [_job(f"j{i}", i * 7 % 50, 30 + i * 13 % 200, gpus=1 + i % 4) for i in range(60)]
    trace = Trace.of("t", jobs)
    first = _run(trace, "3x4xA100", "default").as_dict()
    second = _run(trace, "3x4xA100", "default").as_dict()
    for noisy in ("wall_s", "decide_ms_avg"):
        first.pop(noisy)
        second.pop(noisy)
    assert first == second


def test_backfill_runs_short_work_beside_a_blocked_head_that_fifo_holds_back():
    # f1 and f2 leave 4 and 2 GPUs free; the 8-GPU head waits for f1. FIFO holds the short
    # jobs behind it; backfill holds node 0's 4 GPUs for the head and runs them on node 1.
    jobs = [_job("f1", 0, 4000, gpus=4), _job("f2", 0, 4000, gpus=6), _job("wide", 1, 5000, 8)]
    jobs += [_job(f"s{i}", 2 + i, 60) for i in range(40)]
    fifo = _run(Trace.of("t", jobs), "2x8xA100", "fifo", interval_s=0)
    ours = _run(Trace.of("t", jobs), "2x8xA100", "fifo-backfill", interval_s=0)
    assert ours.makespan_s == fifo.makespan_s == 9000  # the head started at 4000 either way
    assert ours.avg_jct_s is not None and fifo.avg_jct_s is not None
    assert ours.avg_jct_s < fifo.avg_jct_s / 3


def test_quota_weights_split_each_type_exactly():
    nodes = parse_spec("3x8xA100,2x2xT4")
    quotas = quotas_from_weights(nodes, [("a", 2.0), ("b", 1.0), ("c", 0.0)])
    got = {(q.project, q.accelerator_type): q.guaranteed for q in quotas}
    assert got == {("a", "A100"): 16, ("b", "A100"): 8, ("a", "T4"): 3, ("b", "T4"): 1}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("3y8", r"is not COUNTxGPUSxTYPE"),
        ("2x8", r"has GPUs but no type"),
        ("2x8xA100:disk=5", r"option\(s\) disk unknown"),
        ("0x8xA100", r"has no nodes"),
    ],
)
def test_bad_cluster_specs_are_invalid_input(spec, match):
    with pytest.raises(InvalidInput, match=match):
        parse_spec(spec)


def test_cluster_spec_options_set_cpus_and_memory():
    nodes = parse_spec("1x4xT4:cpu=16:mem=64,1x0:cpu=8")
    assert [(n.cpu_milli, n.memory_mib, len(n.accelerators)) for n in nodes] == [
        (16000, 65536, 4),
        (8000, 512 * 1024, 0),
    ]


def test_simulate_from_a_csv_file(tmp_path: Path):
    path = tmp_path / "mine.csv"
    path.write_text(
        "id,project,submit_s,duration_s,gpus,gpu_milli,gpu_type,gang\n"
        "a,vision,0,100,2,,A100,2\n"
        "b,nlp,5,50,,500,,\n"
    )
    r = simulate(str(path), "2x4xA100", "default", interval_s=0)
    assert r.finished == 2 and r.trace == "mine.csv"
    assert r.avg_jct_s == pytest.approx(75)
    assert not math.isnan(r.gpu_utilization)


def test_simulate_rejects_unknown_names():
    with pytest.raises(InvalidInput, match="neither a built-in trace"):
        simulate("no-such-trace", "1x1xA100")
    with pytest.raises(InvalidInput, match="unknown policy"):
        simulate("philly", "1x1xA100", "fastest")
    with pytest.raises(InvalidInput, match="unknown policy setting"):
        simulate("philly", "1x1xA100", overrides={"turbo": True})
