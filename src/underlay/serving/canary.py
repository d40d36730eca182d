"""Canary releases: split traffic by weight between the stable and the canary version, watch
the canary, and say when it must be rolled back or has passed.

Everything here is pure and deterministic: the caller passes the uniform draw ``u`` that
picks an arm and the clock ``now`` of every observation and verdict, so a test (or the
simulator) replays a canary exactly. Nothing here reads the clock, a random source or the
database; the data plane owns one :class:`CanaryMonitor` per running canary and the control
plane acts on its :class:`Verdict` (records the event, rolls back or promotes).

The rules (a :class:`CanaryPolicy`):

* **Split.** A request goes to the canary when ``u < weight`` (``u`` uniform in [0, 1)), so
  the canary's share converges to ``weight``.
* **Rollback.** Once the canary has served ``min_requests`` requests, it is rolled back as
  soon as its error rate is over ``max_error_rate`` or its p99 latency over ``max_p99_ms``.
  Before ``min_requests`` it is rolled back early only when the breach is already certain: so
  many errors that even if every request up to ``min_requests`` succeeded the error rate would
  still be over the limit (a broken version goes at once, not after ``min_requests``).
* **Passed.** When the window (``window_s`` from the start) is over and the canary has seen
  ``min_requests`` without a breach. A canary with fewer requests at the window's end stays
  ``running`` until it has them, and is then judged at once (breach: rollback, else passed):
  there is no pass without evidence.
* **Latched.** The first ``rollback`` or ``passed`` is final: later observations change
  neither the state nor the figures that decided it.

The p99 decision is exact: the monitor counts the canary requests slower than the limit, and
the nearest-rank p99 of ``n`` latencies is over the limit exactly when more than
``n - ceil(0.99 n)`` of them are. The p99 *figures* reported come from a log-bucketed
histogram (2 % wide buckets, the bucket's upper edge capped by the largest latency seen), so
memory stays bounded whatever the traffic. Latencies of failed requests count too.

Not thread-safe: one event loop (the data plane's) owns a monitor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from underlay.errors import InvalidInput

Arm = Literal["stable", "canary"]
State = Literal["running", "rollback", "passed"]
ARMS: tuple[Arm, Arm] = ("stable", "canary")

_BUCKET_RATIO = 1.02  # the histogram's bucket width: p99 figures are within 2 %
_BUCKET_FLOOR_S = 1e-5  # latencies at or below 10 microseconds share bucket 0
_LOG_RATIO = math.log(_BUCKET_RATIO)


@dataclass(frozen=True)
class CanaryPolicy:
    """How much traffic the canary gets and the limits it must keep over its window."""

    weight: float
    window_s: float
    min_requests: int
    max_error_rate: float
    max_p99_ms: float

    def __post_init__(self) -> None:
        if isinstance(self.min_requests, bool) or not isinstance(self.min_requests, int):
            raise InvalidInput("canary policy: min_requests must be a whole number")
        checks = [
            (0.0 < self.weight < 1.0, "weight must be between 0 and 1 (exclusive)"),
            (0.0 < self.window_s <= 30 * 86400, "window_s must be over 0 and at most 30 days"),
            (1 <= self.min_requests <= 10**9, "min_requests must be between 1 and 10^9"),
            (0.0 <= self.max_error_rate < 1.0, "max_error_rate must be in [0, 1)"),
            (0.0 < self.max_p99_ms <= 3_600_000, "max_p99_ms must be over 0 and at most 1 h"),
        ]
        for ok, message in checks:
            # `not ok` also refuses NaN, which fails every comparison
            if not ok:
                raise InvalidInput(f"canary policy: {message}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "window_s": self.window_s,
            "min_requests": self.min_requests,
            "max_error_rate": self.max_error_rate,
            "max_p99_ms": self.max_p99_ms,
        }


@dataclass(frozen=True)
class Verdict:
    """Where a canary stands: ``state``, a one-line ``reason``, and the ``figures`` behind it
    (per arm: requests, errors, error_rate, p99_ms; and the elapsed time and the policy)."""

    state: State
    reason: str
    figures: dict[str, Any]


def choose(weight: float, u: float) -> Arm:
    """The arm of a request whose uniform draw in [0, 1) is ``u``."""
    return "canary" if u < weight else "stable"


def exact_p99(latencies_s: list[float]) -> float:
    """The nearest-rank p99 of ``latencies_s`` in seconds (the definition the monitor uses)."""
    ordered = sorted(latencies_s)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


def tail_allowed(requests: int) -> int:
    """How many of ``requests`` latencies may be over the limit with the p99 still within it."""
    return requests - math.ceil(0.99 * requests)


@dataclass
class ArmStats:
    """What one arm served: counts, the latencies as a histogram, and (canary) how many
    requests were slower than the policy's p99 limit."""

    requests: int = 0
    errors: int = 0
    slow: int = 0
    max_s: float = 0.0
    buckets: dict[int, int] = field(default_factory=dict)

    def add(self, latency_s: float, ok: bool, limit_s: float) -> None:
        self.requests += 1
        if not ok:
            self.errors += 1
        if latency_s > limit_s:
            self.slow += 1
        self.max_s = max(self.max_s, latency_s)
        index = 0
        if latency_s > _BUCKET_FLOOR_S:
            index = math.ceil(math.log(latency_s / _BUCKET_FLOOR_S) / _LOG_RATIO)
        self.buckets[index] = self.buckets.get(index, 0) + 1

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p99_ms(self) -> float | None:
        """The p99 latency in ms from the histogram (an upper bound of the exact one, at most
        2 % over it), None with no request yet."""
        if not self.requests:
            return None
        rank = math.ceil(0.99 * self.requests)
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                edge = _BUCKET_FLOOR_S * _BUCKET_RATIO**index
                return round(min(edge, self.max_s) * 1000.0, 4)
        raise AssertionError("unreachable: the buckets hold every request")

    def figures(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "p99_ms": self.p99_ms(),
        }


class CanaryMonitor:
    """The per-arm figures of one canary and its verdict (the rules: the module docstring)."""

    def __init__(self, policy: CanaryPolicy, started_at: float) -> None:
        self.policy = policy
        self.started_at = float(started_at)
        self.ends_at = self.started_at + policy.window_s
        self.arms: dict[Arm, ArmStats] = {arm: ArmStats() for arm in ARMS}
        self._limit_s = policy.max_p99_ms / 1000.0
        self._final: Verdict | None = None

    def choose(self, u: float) -> Arm:
        """The arm for a request drawn ``u`` (uniform in [0, 1)); all stable once decided."""
        if self._final is not None:
            # rolled back: the canary takes nothing more; passed: the control plane promotes
            # it, until then the stable version keeps serving as it is known to be good
            return "stable"
        return choose(self.policy.weight, u)

    def observe(self, arm: Arm, latency_s: float, ok: bool, now: float) -> None:
        """One answered request of ``arm`` (``ok`` False for an error the version caused),
        at ``now``. Ignored once the verdict is final."""
        if self._final is not None:
            return
        if now >= self.ends_at and self._enough():
            self._final = self._passed(now)  # the window closed before this request
            return
        latency = latency_s if math.isfinite(latency_s) and latency_s > 0 else 0.0
        self.arms[arm].add(latency, ok, self._limit_s)
        if arm == "canary":
            self._judge(now)

    def verdict(self, now: float) -> Verdict:
        """The state at ``now``: final once rollback or passed."""
        if self._final is not None:
            return self._final
        if now >= self.ends_at and self._enough():
            self._final = self._passed(now)
            return self._final
        canary = self.arms["canary"]
        if now >= self.ends_at:
            reason = (
                f"window over; waiting for {self.policy.min_requests - canary.requests} more "
                f"canary requests (of {self.policy.min_requests}) before judging"
            )
        else:
            reason = (
                f"{canary.requests} canary requests, {canary.errors} errors; "
                f"{max(0.0, self.ends_at - now):.1f} s of the window left"
            )
        return Verdict("running", reason, self.figures(now))

    def figures(self, now: float) -> dict[str, Any]:
        return {
            "stable": self.arms["stable"].figures(),
            "canary": self.arms["canary"].figures(),
            "elapsed_s": round(max(0.0, now - self.started_at), 3),
            "policy": self.policy.to_dict(),
        }

    # -- the rules ---------------------------------------------------------------------------

    def _enough(self) -> bool:
        return self.arms["canary"].requests >= self.policy.min_requests

    def _judge(self, now: float) -> None:
        canary, policy = self.arms["canary"], self.policy
        reason = None
        if self._enough():
            if canary.error_rate > policy.max_error_rate:
                reason = (
                    f"canary error rate {canary.error_rate:.4f} is over the limit "
                    f"{policy.max_error_rate:.4f} after {canary.requests} requests"
                )
            elif canary.slow > tail_allowed(canary.requests):
                reason = (
                    f"canary p99 latency {canary.p99_ms()} ms is over the limit "
                    f"{policy.max_p99_ms} ms after {canary.requests} requests"
                )
        elif canary.errors / policy.min_requests > policy.max_error_rate:
            reason = (
                f"canary failed {canary.errors} of its first {canary.requests} requests: its "
                f"error rate will be over the limit {policy.max_error_rate:.4f} whatever the "
                f"rest of its {policy.min_requests} requests do"
            )
        if reason is not None:
            self._final = Verdict("rollback", reason, self.figures(now))
        elif now >= self.ends_at and self._enough():
            self._final = self._passed(now)

    def _passed(self, now: float) -> Verdict:
        canary = self.arms["canary"]
        reason = (
            f"canary kept its limits over {canary.requests} requests "
            f"(error rate {canary.error_rate:.4f}, p99 {canary.p99_ms()} ms)"
        )
        return Verdict("passed", reason, self.figures(now))
