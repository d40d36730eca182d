"""The quota ledger at its edges: what a project uses, is guaranteed and may borrow, in
thousandths of accelerators, per accelerator type."""

from __future__ import annotations

from underlay.compute.scheduler import Quota
from underlay.compute.scheduler.quota import QuotaLedger, running_counts

from .builders import job, running_on

QUOTAS = (
    Quota("vision", "A100", 8, borrow_limit=4),
    Quota("nlp", "A100", 4),
    Quota("vision", "T4", 2),
)


def _ledger(*runs) -> QuotaLedger:
    return QuotaLedger(QUOTAS, running_counts(runs))


def test_within_is_up_to_the_guarantee_exactly_per_project_and_type():
    ledger = _ledger(running_on(job("r", "vision", gpus=6), [("n0", tuple(range(6)))]))
    assert ledger.within("vision", "A100", 2000)  # 6 + 2 = 8: exactly the guarantee
    assert not ledger.within("vision", "A100", 2001)
    assert ledger.within("nlp", "A100", 4000)  # nlp uses nothing of its own 4
    assert not ledger.within("nlp", "A100", 4001)
    assert ledger.within("vision", "T4", 2000) and not ledger.within("vision", "T4", 2001)
    assert ledger.within("vision", "H100", 0)  # no quota of that type: only nothing fits
    assert not ledger.within("vision", "H100", 1)
    assert not ledger.within("audio", "A100", 1)  # no quota at all


def test_may_borrow_is_up_to_the_guarantee_and_the_limit_exactly():
    ledger = _ledger(running_on(job("r", "vision", gpus=8), [("n0", tuple(range(8)))]))
    assert ledger.may_borrow("vision", "A100", 4000)  # 8 + 4 = 8 guaranteed + 4 limit
    assert not ledger.may_borrow("vision", "A100", 4001)
    assert ledger.may_borrow("nlp", "A100", 10**6)  # no limit: any idle capacity
    fresh = _ledger()
    assert fresh.may_borrow("vision", "A100", 12_000) and not fresh.may_borrow(
        "vision", "A100", 12_001
    )


def test_borrowed_counts_what_runs_above_the_guarantee_not_what_is_leaving():
    runs = [
        running_on(job("a", "vision", gpus=8), [("n0", tuple(range(8)))]),
        running_on(job("b", "vision", gpus=2), [("n1", (0, 1))]),
        running_on(job("c", "vision", gpus=1), [("n1", (2,))], draining_until=99.0),
    ]
    ledger = _ledger(*runs)
    assert ledger.used[("vision", "A100")] == 11_000
    assert ledger.borrowed("vision", "A100") == 2000  # 11 used, 1 leaving, 8 guaranteed
    assert ledger.borrowed("nlp", "A100") == 0


def test_describe_names_use_guarantee_and_limit():
    ledger = _ledger(running_on(job("r", "vision", milli=500), [("n0", (0,))]))
    assert ledger.describe("vision", "A100") == (
        "project vision uses 0.5 of its 8 guaranteed A100 (may borrow 4 more)"
    )
    assert ledger.describe("nlp", "A100") == "project nlp uses 0 of its 4 guaranteed A100"
    assert ledger.describe("audio", "T4") == "project audio uses 0 of its 0 guaranteed T4"
