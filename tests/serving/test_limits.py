"""Rate limits, daily budgets (per process and shared through the metadata database) and the
extraction alarm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from underlay.errors import InvalidInput
from underlay.serving.limits import (
    DAY_S,
    DetectorConfig,
    ExtractionDetector,
    LimitSpec,
    RateLimiter,
    SqlBudgetStore,
    budget_usage,
    retry_after_header,
)
from underlay.store.db import Database

SRC = Path(__file__).resolve().parents[2] / "src"
T0 = 1_800_000_000.0  # an instant inside a UTC day, far from midnight
T0 = (T0 // DAY_S) * DAY_S + 3600.0


def test_the_token_bucket_counts_rows_and_says_when_to_retry() -> None:
    limiter = RateLimiter()
    spec = LimitSpec(rate_per_s=10, burst=20)
    assert limiter.check("t", "d", spec, 15, T0).allowed
    refused = limiter.check("t", "d", spec, 10, T0)
    assert not refused.allowed and "rate limit of 10 rows/s" in refused.reason
    assert refused.retry_after_s == pytest.approx(0.5)  # 5 rows left, 10 wanted, 10 rows/s
    assert retry_after_header(refused) == "1"
    assert limiter.check("t", "d", spec, 10, T0 + 0.5).allowed
    assert limiter.check("other-token", "d", spec, 20, T0).allowed  # buckets are per token
    assert limiter.check("t", "other-deployment", spec, 20, T0).allowed


def test_a_request_larger_than_the_burst_is_served_from_a_full_bucket_and_leaves_debt() -> None:
    limiter = RateLimiter()
    spec = LimitSpec(rate_per_s=10, burst=20)
    assert limiter.check("t", "d", spec, 100, T0).allowed
    after = limiter.check("t", "d", spec, 1, T0 + 1)
    assert not after.allowed and after.retry_after_s == pytest.approx(7.1)  # 80 in debt
    assert limiter.check("t", "d", spec, 1, T0 + 8.1).allowed


def test_the_daily_budget_refuses_whole_requests_until_utc_midnight() -> None:
    limiter = RateLimiter()
    spec = LimitSpec(daily_budget=100)
    assert limiter.check("t", "d", spec, 60, T0).allowed
    refused = limiter.check("t", "d", spec, 41, T0 + 10)
    assert not refused.allowed and "daily budget of 100 rows" in refused.reason
    assert refused.retry_after_s == pytest.approx(DAY_S - 3610)
    assert limiter.check("t", "d", spec, 40, T0 + 10).allowed
    assert limiter.check("t", "d", spec, 100, T0 + DAY_S).allowed  # a new day
    with pytest.raises(InvalidInput):
        LimitSpec(rate_per_s=0)


def test_a_refused_rate_check_charges_no_budget_and_a_refused_budget_no_rate() -> None:
    limiter = RateLimiter()
    spec = LimitSpec(rate_per_s=1, burst=5, daily_budget=6)
    assert limiter.check("t", "d", spec, 5, T0).allowed
    assert not limiter.check("t", "d", spec, 5, T0).allowed  # bucket empty
    assert not limiter.check("t", "d", spec, 5, T0 + 100).allowed  # budget: 5 + 5 > 6
    assert limiter.check("t", "d", spec, 1, T0 + 100).allowed


WORKER = """
import json, sys
from underlay.serving.limits import SqlBudgetStore
from underlay.store.db import Database
url, budget, tries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
database = Database(url)
store = SqlBudgetStore(database.engine)
served = sum(store.take(("tok", "dep"), 7, 1, budget) for _ in range(tries))
store.release()
print(json.dumps(served))
"""


@pytest.mark.slow
def test_worker_processes_sharing_the_database_never_pass_the_budget(db: Database) -> None:
    database, database_url = db, db.url
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, database_url, "500", "300"],
            stdout=subprocess.PIPE,
            env=env,
        )
        for _ in range(3)
    ]
    served = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    with database.engine.connect() as conn:
        used = conn.execute(select(budget_usage.c.used)).scalar_one()
    assert used == sum(served)  # unspent leases were given back
    assert 500 - 3 * (500 // 8) <= sum(served) <= 500


def test_one_process_with_the_shared_store_spends_the_budget_exactly(db: Database) -> None:
    database = db
    limiter = RateLimiter(SqlBudgetStore(database.engine))
    spec = LimitSpec(daily_budget=50)
    served = sum(limiter.check("t", "d", spec, 3, T0).allowed for _ in range(30))
    assert served == 16  # 48 rows; the 17th request of 3 would pass 50
    assert limiter.check("t", "d", spec, 2, T0).allowed
    assert not limiter.check("t", "d", spec, 1, T0).allowed


REAL = np.random.RandomState(7).normal(loc=5.0, scale=2.0, size=(4000, 6))


def _detector(**kw: float) -> ExtractionDetector:
    detector = ExtractionDetector(DetectorConfig(**kw))  # type: ignore[arg-type]
    detector.set_reference("d", REAL[:2000])
    return detector


def test_normal_traffic_raises_no_alarm() -> None:
    detector = _detector()
    alarms = []
    for hour in range(30):
        for i in range(10):  # 10 requests of 10 rows an hour: 100 rows/h
            rows = REAL[2000 + (hour * 100 + i * 10) % 2000 :][:10]
            alarms.append(detector.observe("t", "d", rows, T0 + hour * 3600 + i * 60))
    assert alarms == [None] * 300
    # rows with NaN (where a model allows them) are left out of the score, not poisoning it
    holes = np.where(REAL[:50] > 6, np.nan, REAL[:50])
    assert detector.observe("t", "d", holes, T0 + 31 * 3600) is None
    probes = np.random.RandomState(5).uniform(-20, 30, size=(400, 6))
    raised = detector.observe("t", "d", probes, T0 + 31 * 3600 + 1)
    assert raised is not None and raised.startswith("spread:")


def test_a_volume_far_above_the_tokens_own_history_raises_the_alarm_once() -> None:
    detector = _detector()
    for hour in range(24):
        assert detector.observe("t", "d", REAL[hour * 50 :][:50], T0 + hour * 3600) is None
    burst = T0 + 24 * 3600
    alarms = [detector.observe("t", "d", REAL[i * 100 :][:100], burst + i) for i in range(20)]
    raised = [a for a in alarms if a is not None]
    assert len(raised) == 1 and raised[0].startswith("volume:")
    assert "hourly mean of 50" in raised[0]
    # five times the usual volume is normal for a token with a history of 900 rows an hour
    steady = _detector()
    for hour in range(25):
        for i in range(9 if hour < 24 else 45):
            assert steady.observe("s", "d", REAL[i * 40 :][:100], T0 + hour * 3600 + i) is None


def test_inputs_spread_over_the_feature_space_raise_the_alarm() -> None:
    detector = _detector()
    low, high = REAL.min(axis=0), REAL.max(axis=0)
    probes = np.random.RandomState(3).uniform(low, high, size=(400, 6))  # uniform in range
    alarms = [detector.observe("thief", "d", probes[i : i + 20], T0 + i) for i in range(0, 400, 20)]
    raised = [a for a in alarms if a is not None]
    assert len(raised) == 1 and raised[0].startswith("spread:")
    # a real customer segment, shifted by one standard deviation in two features, is fine
    segment = REAL[2000:2400].copy()
    segment[:, :2] += 2.0
    for i in range(0, 400, 20):
        assert detector.observe("segment", "d", segment[i : i + 20], T0 + i) is None


def test_the_pooled_reference_cannot_be_defined_by_one_token() -> None:
    detector = ExtractionDetector(DetectorConfig(reference_rows=400))
    probes = np.random.RandomState(4).uniform(-10, 20, size=(600, 6))
    for i in range(0, 600, 20):  # alone, the thief contributes at most a quarter: no reference
        assert detector.observe("thief", "d", probes[i : i + 20], T0 + i) is None
    for n, token in enumerate(("a", "b", "c")):
        detector.observe(token, "d", REAL[n * 100 : n * 100 + 100], T0 + 3000)
    raised = detector.observe("thief", "d", probes[:20], T0 + 3001)
    assert raised is not None and raised.startswith("spread:")
