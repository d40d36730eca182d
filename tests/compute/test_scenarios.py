"""The scenario suite, scaled down: ``default`` against every simple baseline, in simulated
time (so the assertions hold on any machine, under any load)."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

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


def test_the_benchmark_prints_each_policy_and_the_ratio_to_the_best_baseline() -> None:
    root = Path(__file__).resolve().parents[2]
    script = root / "benchmarks" / "scenarios.py"
    args = ["--only", "heavy-70", "burst-gangs", "--scale", "0.05"]
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, check=True
    )
    assert "heavy-70: " in done.stdout and "(offered load 70%)" in done.stdout
    assert "burst-gangs: " in done.stdout and "(burst)" in done.stdout
    for policy in ("default", *BASELINES):
        assert f"\n  {policy} " in done.stdout
    assert "default / best baseline (" in done.stdout and "worst ratio: " in done.stdout
    done = subprocess.run(
        [sys.executable, str(script), *args, "--json"], capture_output=True, text=True, check=True
    )
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["scenario"] for r in rows] == ["heavy-70", "burst-gangs"]
    for r in rows:
        best = r["policies"][r["best_baseline"]]["avg_jct_s"]
        assert r["ratio"] == pytest.approx(r["policies"]["default"]["avg_jct_s"] / best)
