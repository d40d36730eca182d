"""The scenario suite, scaled down: ``default`` against every simple baseline, in simulated
time (so the assertions hold on any machine, under any load)."""

from __future__ import annotations

from functools import cache

import pytest

from underlay.compute.simulator import Report
from underlay.compute.simulator.scenarios import BASELINES, HEAVY_TAILED, SCENARIOS, replay

SCALE = 0.5
"""Half the jobs of ``benchmarks/scenarios.py`` (clusters and loads unchanged)."""

MISSED = {
    "skewed-quotas": "1.11x las at this scale (1.03x at full scale): guarantees keep short "
    "work of projects that borrow waiting behind longer work within another's guarantee",
}
"""Scenarios where ``default`` is still more than 5 % behind the best baseline at this scale
(issue 9); docs/scheduling.md lists the full-scale figures."""


@cache
def _reports(name: str) -> dict[str, Report]:
    scenario = SCENARIOS[name](0, SCALE)
    return {p: replay(scenario, p) for p in ("default", *BASELINES)}


def _avg(report: Report) -> float:
    assert report.avg_jct_s is not None
    return report.avg_jct_s


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=MISSED[n]))
        if n in MISSED
        else n
        for n in SCENARIOS
    ],
)
def test_default_is_within_five_percent_of_the_best_baseline(name: str) -> None:
    reports = _reports(name)
    assert all(r.unfinished == 0 and r.rejected == 0 for r in reports.values())
    best = min(_avg(reports[p]) for p in BASELINES)
    assert _avg(reports["default"]) <= 1.05 * best


@pytest.mark.slow
@pytest.mark.parametrize("name", HEAVY_TAILED)
def test_default_keeps_its_win_over_first_come_first_served_on_heavy_tails(name: str) -> None:
    reports = _reports(name)
    fcfs = min(_avg(reports[p]) for p in ("fifo", "fifo-backfill", "first-fit"))
    assert _avg(reports["default"]) <= fcfs


def test_scenarios_are_seeded_and_offer_the_load_they_name() -> None:
    a, b = SCENARIOS["heavy-85"](3, SCALE), SCENARIOS["heavy-85"](3, SCALE)
    assert a.trace == b.trace
    assert a.trace != SCENARIOS["heavy-85"](4, SCALE).trace
    assert a.offered_load == pytest.approx(0.85, rel=0.01)
    assert SCENARIOS["burst-1gpu"](0, SCALE).offered_load is None
