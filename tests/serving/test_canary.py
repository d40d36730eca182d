"""The canary split and monitor: pure, replayed with explicit draws and clocks."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from underlay.errors import InvalidInput
from underlay.serving.canary import CanaryMonitor, CanaryPolicy, choose, exact_p99

POLICY = CanaryPolicy(weight=0.2, window_s=60, min_requests=20, max_error_rate=0.1, max_p99_ms=50)


def test_split_of_evenly_spread_draws_is_the_weight_within_one_request() -> None:
    for weight in (0.01, 0.1, 0.25, 0.5, 0.9):
        n = 1000
        canary = sum(choose(weight, (i + 0.5) / n) == "canary" for i in range(n))
        assert abs(canary - weight * n) <= 1


@settings(max_examples=60, deadline=None)
@given(weight=st.floats(0.01, 0.99), seed=st.integers(0, 2**32 - 1))
def test_split_converges_to_the_weight(weight: float, seed: int) -> None:
    draws = random.Random(seed)
    monitor = CanaryMonitor(
        CanaryPolicy(weight, window_s=10, min_requests=1, max_error_rate=0.5, max_p99_ms=100),
        started_at=0,
    )
    n = 20_000
    canary = sum(monitor.choose(draws.random()) == "canary" for _ in range(n))
    sigma = math.sqrt(n * weight * (1 - weight))
    assert abs(canary - weight * n) <= 6 * sigma  # a false alarm once in ~10^9 runs


def test_a_broken_canary_is_rolled_back_before_min_requests() -> None:
    monitor = CanaryMonitor(POLICY, started_at=100)
    for i in range(2):
        monitor.observe("canary", 0.001, ok=False, now=101 + i)
    assert monitor.verdict(103).state == "running"  # 2/20 = 0.1 is not over 0.1 yet
    monitor.observe("canary", 0.001, ok=False, now=104)
    verdict = monitor.verdict(105)
    assert verdict.state == "rollback"
    assert "failed 3 of its first 3 requests" in verdict.reason
    assert verdict.figures["canary"]["errors"] == 3
    assert monitor.choose(0.0) == "stable"  # no more traffic to a rolled-back canary


def test_error_rate_over_the_limit_after_min_requests_rolls_back() -> None:
    monitor = CanaryMonitor(POLICY, started_at=0)
    for i in range(20):
        monitor.observe("canary", 0.001, ok=i >= 2, now=i)  # 2 errors: rate 0.1, allowed
    assert monitor.verdict(21).state == "running"
    monitor.observe("canary", 0.001, ok=False, now=22)  # 3 of 21: 0.143
    verdict = monitor.verdict(23)
    assert verdict.state == "rollback"
    assert "error rate 0.1429 is over the limit 0.1000 after 21 requests" in verdict.reason


def test_p99_over_the_limit_rolls_back_with_its_figures() -> None:
    monitor = CanaryMonitor(POLICY, started_at=0)
    for i in range(19):
        monitor.observe("canary", 0.010, ok=True, now=i)
    monitor.observe("canary", 0.200, ok=True, now=19)  # p99 of 20 is the slowest
    verdict = monitor.verdict(20)
    assert verdict.state == "rollback"
    assert "p99 latency" in verdict.reason
    assert 200 <= verdict.figures["canary"]["p99_ms"] <= 200 * 1.02
    # final: more fast requests change nothing
    for i in range(100):
        monitor.observe("canary", 0.001, ok=True, now=21 + i)
    assert monitor.verdict(200) == verdict


def test_a_good_canary_passes_at_the_window_end_and_not_before() -> None:
    monitor = CanaryMonitor(POLICY, started_at=0)
    for i in range(30):
        monitor.observe("canary", 0.005, ok=True, now=i)
        monitor.observe("stable", 0.004, ok=i % 10 != 0, now=i)
    assert monitor.verdict(59.9).state == "running"
    verdict = monitor.verdict(60)
    assert verdict.state == "passed"
    assert verdict.figures["canary"] == {
        "requests": 30,
        "errors": 0,
        "error_rate": 0.0,
        "p99_ms": 5.0,
    }
    assert verdict.figures["stable"]["errors"] == 3


def test_a_window_with_too_few_requests_waits_for_them_then_judges() -> None:
    monitor = CanaryMonitor(POLICY, started_at=0)
    for i in range(5):
        monitor.observe("canary", 0.005, ok=True, now=i)
    verdict = monitor.verdict(100)
    assert verdict.state == "running"
    assert "waiting for 15 more canary requests" in verdict.reason
    for i in range(14):
        monitor.observe("canary", 0.005, ok=True, now=100 + i)
    assert monitor.verdict(120).state == "running"
    monitor.observe("canary", 0.005, ok=True, now=121)
    assert monitor.verdict(121).state == "passed"


@pytest.mark.parametrize(
    "change",
    [
        {"weight": 0.0},
        {"weight": 1.0},
        {"weight": float("nan")},
        {"window_s": 0},
        {"min_requests": 0},
        {"min_requests": True},
        {"max_error_rate": 1.0},
        {"max_p99_ms": -1},
    ],
)
def test_a_bad_policy_is_refused(change: dict[str, object]) -> None:
    fields = {**POLICY.to_dict(), **change}
    with pytest.raises(InvalidInput, match="canary policy"):
        CanaryPolicy(**fields)  # type: ignore[arg-type]


observations = st.lists(
    st.tuples(
        st.booleans(),  # ok
        st.floats(0.0, 0.2),  # latency, s
        st.floats(0.0, 2.0),  # time since the previous observation, s
    ),
    min_size=1,
    max_size=150,
)
policies = st.builds(
    CanaryPolicy,
    weight=st.just(0.5),
    window_s=st.floats(1.0, 100.0),
    min_requests=st.integers(1, 40),
    max_error_rate=st.floats(0.0, 0.5),
    max_p99_ms=st.floats(1.0, 150.0),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, seen=observations)
def test_a_breach_always_leads_to_rollback(
    policy: CanaryPolicy, seen: list[tuple[bool, float, float]]
) -> None:
    """Replayed against a reference that keeps every latency: whenever the canary has
    min_requests in its window (or is still waiting for them) and breaches a limit, the
    verdict is rollback from then on; without any breach it never is."""
    monitor = CanaryMonitor(policy, started_at=0)
    now, latencies, errors, breached = 0.0, [], 0, False
    for ok, latency, step in seen:
        now += step
        if monitor.verdict(now).state == "passed":
            break
        monitor.observe("canary", latency, ok, now)
        latencies.append(latency)
        errors += not ok
        n = len(latencies)
        if n >= policy.min_requests:
            over_rate = errors / n > policy.max_error_rate
            over_p99 = exact_p99(latencies) * 1000 > policy.max_p99_ms
            breached = breached or over_rate or over_p99
        elif errors / policy.min_requests > policy.max_error_rate:
            breached = True
        if breached:
            assert monitor.verdict(now).state == "rollback"
    assert (monitor.verdict(now).state == "rollback") == breached


@settings(max_examples=100, deadline=None)
@given(policy=policies, n=st.integers(1, 200), seed=st.integers(0, 2**32 - 1))
def test_a_canary_within_its_limits_passes(policy: CanaryPolicy, n: int, seed: int) -> None:
    draws = random.Random(seed)
    monitor = CanaryMonitor(policy, started_at=5)
    for i in range(n):
        latency = draws.uniform(0, policy.max_p99_ms / 1000)
        monitor.observe("canary", latency, ok=True, now=5 + policy.window_s * i / n)
    verdict = monitor.verdict(5 + policy.window_s)
    assert verdict.state == ("passed" if n >= policy.min_requests else "running")
    if verdict.state == "passed":
        assert verdict.figures["canary"]["p99_ms"] <= policy.max_p99_ms
