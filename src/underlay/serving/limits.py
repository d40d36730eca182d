"""Protection against overuse and model extraction: rate limits, daily budgets, an alarm.

**Unit.** Limits count *rows* (predictions), not requests: what a model thief needs is
answers, so bundling 100 rows in one request must cost what 100 requests cost.

**Rate limit** (:class:`RateLimiter`): a token bucket per (token, deployment) holding at most
``burst`` rows and refilled at ``rate_per_s`` rows a second. A request is let in when the
bucket holds ``min(rows, burst)``; it is charged all its rows, so a request larger than the
burst is served from a full bucket and leaves it in debt, and the long-run rate never passes
``rate_per_s``. A refusal carries ``retry_after_s``, the time until the bucket holds enough.

**Daily budget**: at most ``daily_budget`` rows per (token, deployment) per UTC day; a
request that would pass it is refused whole, with ``retry_after_s`` until the next UTC
midnight.

**Several server worker processes.** The per-second bucket lives in each process: it smooths
load, and with W workers a token may reach W times the rate at worst (requests spread over
workers by connection). The daily budget, the hard bound on extraction, is shared and exact
when the limiter is given a :class:`SqlBudgetStore` (the metadata database: PostgreSQL on a
cluster, SQLite locally): a process *leases* rows from the day's counter with one atomic
``UPDATE … WHERE used + k <= budget`` and spends the lease locally, so the database sees one
statement per lease, not per request; leases grow (up to an eighth of the budget) while a
token is busy. The sum of leases never passes the budget, so all workers together never
serve more than it; a process that dies loses its unspent lease (the token gets less, never
more). Without a shared store (:class:`MemoryBudgetStore`, the default for one process) the
budget is per process.

**Extraction alarm** (:class:`ExtractionDetector`), two rules per (token, deployment), each
raised once per window:

- *volume*: the rows a token sent in the current window (an hour) exceed
  ``volume_factor`` (10) times its mean hourly volume over the last ``history_windows`` (24)
  hours since it was first seen, and at least ``volume_floor`` (1,000) rows;
- *spread*: over the token's last ``spread_min_rows`` (200) or more rows, the mean squared
  z-score of its inputs against real traffic exceeds ``spread_factor`` (3.0). Real traffic
  scores 1 by construction (the reference's own mean and variance); inputs sampled uniformly
  over the training range score about 4 (a box of ±3.5 standard deviations has mean square
  3.5²/3), wider synthetic probes far more, while a genuine customer segment shifted by one
  standard deviation in a few features stays near 1 to 2. The reference ("real traffic") is
  either given (:meth:`ExtractionDetector.set_reference`, e.g. a sample of the training
  table) or pooled from all tokens' traffic with each token contributing at most a quarter
  of it, so one heavy token cannot define what normal looks like.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Engine, Table, update
from sqlalchemy.exc import IntegrityError

from underlay.errors import InvalidInput
from underlay.serving.models import ServingBudgetUsage

DAY_S = 86400.0


@dataclass(frozen=True)
class LimitSpec:
    """A deployment's limits per token; None switches a limit off."""

    rate_per_s: float | None = None
    burst: int = 100
    daily_budget: int | None = None

    def __post_init__(self) -> None:
        if (self.rate_per_s is not None and self.rate_per_s <= 0) or self.burst < 1:
            raise InvalidInput("a rate limit needs rate_per_s > 0 and burst >= 1")
        if self.daily_budget is not None and self.daily_budget < 1:
            raise InvalidInput("a daily budget must be at least 1 row")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0
    reason: str = ""


ALLOWED = Decision(True)


class BudgetStore(Protocol):
    def take(self, key: tuple[str, str], day: int, rows: int, budget: int) -> bool:
        """Charge ``rows`` to the key's counter for ``day`` if it stays within ``budget``."""
        ...


class MemoryBudgetStore:
    """Daily counters in this process."""

    def __init__(self) -> None:
        self._used: dict[tuple[str, str], tuple[int, int]] = {}

    def take(self, key: tuple[str, str], day: int, rows: int, budget: int) -> bool:
        d, used = self._used.get(key, (day, 0))
        if d != day:
            used = 0
        if used + rows > budget:
            return False
        self._used[key] = (day, used + rows)
        return True


budget_usage: Table = ServingBudgetUsage.__table__  # type: ignore[assignment]
"""The shared day counters (see the module docstring), created by migration 0017."""


@dataclass
class _Lease:
    day: int
    left: int = 0
    size: int = 0
    claims: int = 0


class SqlBudgetStore:
    """Day counters shared by every process through the metadata database, spent in leases."""

    def __init__(self, engine: Engine, *, first_lease: int = 16) -> None:
        self.engine = engine
        self.first_lease = first_lease
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._lock = threading.Lock()

    def take(self, key: tuple[str, str], day: int, rows: int, budget: int) -> bool:
        with self._lock:
            lease = self._leases.get(key)
            if lease is None or lease.day != day:
                lease = self._leases[key] = _Lease(day, size=self.first_lease)
            if lease.left >= rows:
                lease.left -= rows
                return True
            need = rows - lease.left
            grow = min(max(lease.size, need), max(budget // 8, need))
            for amount in (grow, need) if grow > need else (need,):
                if self._claim(key, day, amount, budget):
                    lease.left += amount - rows
                    lease.claims += 1
                    lease.size = min(lease.size * 2, max(budget // 8, 1))
                    return True
            return False

    def _claim(self, key: tuple[str, str], day: int, amount: int, budget: int) -> bool:
        where = (
            (budget_usage.c.token_key == key[0])
            & (budget_usage.c.deployment_key == key[1])
            & (budget_usage.c.day == day)
        )
        stmt = update(budget_usage).where(where & (budget_usage.c.used + amount <= budget))
        with self.engine.begin() as conn:
            if conn.execute(stmt.values(used=budget_usage.c.used + amount)).rowcount:
                return True
        if amount > budget:
            return False
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    budget_usage.insert().values(
                        token_key=key[0], deployment_key=key[1], day=day, used=amount
                    )
                )
            return True
        except IntegrityError:  # another process created the day's row first
            with self.engine.begin() as conn:
                return bool(conn.execute(stmt.values(used=budget_usage.c.used + amount)).rowcount)

    def release(self) -> None:
        """Give unspent leases back (on shutdown), so other processes may use them."""
        with self._lock:
            for key, lease in self._leases.items():
                if lease.left <= 0:
                    continue
                where = (
                    (budget_usage.c.token_key == key[0])
                    & (budget_usage.c.deployment_key == key[1])
                    & (budget_usage.c.day == lease.day)
                )
                with self.engine.begin() as conn:
                    conn.execute(
                        update(budget_usage)
                        .where(where)
                        .values(used=budget_usage.c.used - lease.left)
                    )
                lease.left = 0


@dataclass
class _Bucket:
    tokens: float
    last: float


class RateLimiter:
    """Token-bucket rate limits and daily budgets per (token, deployment)."""

    def __init__(self, budgets: BudgetStore | None = None) -> None:
        self.budgets: BudgetStore = budgets if budgets is not None else MemoryBudgetStore()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def check(
        self, token_key: str, deployment_key: str, spec: LimitSpec, rows: int, now: float
    ) -> Decision:
        """Let ``rows`` in or say why not and when to retry; charges only what it lets in."""
        key = (token_key, deployment_key)
        bucket = None
        if spec.rate_per_s is not None:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(float(spec.burst), now)
            else:
                elapsed = max(now - bucket.last, 0.0)
                bucket.tokens = min(spec.burst, bucket.tokens + elapsed * spec.rate_per_s)
                bucket.last = now
            want = min(rows, spec.burst)
            if bucket.tokens + 1e-6 < want:  # float error must not refuse an exact refill
                wait = (want - bucket.tokens) / spec.rate_per_s
                return Decision(False, wait, f"rate limit of {spec.rate_per_s:g} rows/s")
        if spec.daily_budget is not None:
            day = int(now // DAY_S)
            if not self.budgets.take(key, day, rows, spec.daily_budget):
                return Decision(
                    False,
                    (day + 1) * DAY_S - now,
                    f"daily budget of {spec.daily_budget} rows used up",
                )
        if bucket is not None:
            bucket.tokens -= rows
        return ALLOWED


@dataclass(frozen=True)
class DetectorConfig:
    """The alarm's thresholds (see the module docstring)."""

    window_s: float = 3600.0
    history_windows: int = 24
    volume_factor: float = 10.0
    volume_floor: int = 1000
    spread_min_rows: int = 200
    spread_factor: float = 3.0
    sample_rows: int = 1024
    reference_rows: int = 2000


@dataclass
class _TokenState:
    first_window: int
    windows: dict[int, int] = field(default_factory=dict)
    # the token's last rows, each request's with its summed squared z-scores (scored once,
    # against the reference version ``scored_for``: a request costs O(its rows))
    recent: deque[tuple[np.ndarray[Any, Any], float]] = field(default_factory=deque)
    recent_rows: int = 0
    z_total: float = 0.0
    scored_for: int = -1
    alerted: dict[str, int] = field(default_factory=dict)
    pooled: int = 0
    window: int = -1  # the window ``limit`` was computed for
    limit: float = 0.0
    baseline: float = 0.0


_VERSIONS = itertools.count()


@dataclass
class _Reference:
    mean: np.ndarray[Any, Any] | None = None
    std: np.ndarray[Any, Any] | None = None
    pool: list[np.ndarray[Any, Any]] = field(default_factory=list)
    pooled: int = 0
    fixed: bool = False
    version: int = field(default_factory=lambda: next(_VERSIONS))

    def z_sum(self, matrix: np.ndarray[Any, Any]) -> float:
        assert self.mean is not None and self.std is not None
        z = (matrix - self.mean) / self.std
        return float(np.einsum("ij,ij->", z, z))


class ExtractionDetector:
    """Flag tokens whose query pattern looks like model extraction."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._tokens: dict[tuple[str, str], _TokenState] = {}
        self._refs: dict[str, _Reference] = {}

    def set_reference(self, deployment_key: str, sample: np.ndarray[Any, Any]) -> None:
        """What real inputs look like for a deployment (rows of numeric features)."""
        matrix = _matrix(sample)
        if matrix is None or len(matrix) < 2:
            raise InvalidInput("a reference sample needs at least two rows of numbers")
        if not np.isfinite(matrix).all():
            raise InvalidInput("a reference sample must not hold NaN or infinity")
        self._refs[deployment_key] = _reference(matrix, fixed=True)

    def observe(
        self, token_key: str, deployment_key: str, rows: np.ndarray[Any, Any], now: float
    ) -> str | None:
        """Record a request's inputs; a reason when the token newly looks like extraction."""
        cfg = self.config
        window = int(now // cfg.window_s)
        state = self._tokens.get((token_key, deployment_key))
        if state is None:
            state = self._tokens[(token_key, deployment_key)] = _TokenState(window)
        matrix = _matrix(rows)
        count = len(rows) if matrix is None else len(matrix)
        state.windows[window] = state.windows.get(window, 0) + count
        reasons = [self._volume(state, window)]
        if matrix is not None:
            reasons.append(self._spread(state, deployment_key, matrix))
        for reason in reasons:
            if reason is not None:
                kind = reason.split(":", 1)[0]
                if state.alerted.get(kind) != window:
                    state.alerted[kind] = window
                    return reason
        return None

    def _volume(self, state: _TokenState, window: int) -> str | None:
        cfg = self.config
        if state.window != window:  # once per window: forget old ones, fix the baseline
            for old in [w for w in state.windows if w < window - cfg.history_windows]:
                del state.windows[old]
            past = range(max(state.first_window, window - cfg.history_windows), window)
            total = sum(state.windows.get(w, 0) for w in past)
            state.baseline = total / len(past) if past else 0.0
            state.limit = max(cfg.volume_factor * state.baseline, cfg.volume_floor)
            state.window = window
        current = state.windows[window]
        if current > state.limit:
            return (
                f"volume: {current} rows this window, over {cfg.volume_factor:g} times the "
                f"token's hourly mean of {state.baseline:.0f} (and over {cfg.volume_floor})"
            )
        return None

    def _spread(
        self, state: _TokenState, deployment_key: str, matrix: np.ndarray[Any, Any]
    ) -> str | None:
        cfg = self.config
        ref = self._pool(state, deployment_key, matrix)
        width = matrix.shape[1]
        ready = ref.mean is not None and ref.mean.shape[0] == width
        if ready and state.scored_for != ref.version:  # a new reference: score again, once
            kept = [m for m, _ in state.recent if m.shape[1] == width]
            state.recent = deque((m, ref.z_sum(m)) for m in kept)
            state.recent_rows = sum(len(m) for m in kept)
            state.z_total = sum(z for _, z in state.recent)
            state.scored_for = ref.version
        z = ref.z_sum(matrix) if ready else 0.0
        if not math.isfinite(z):  # NaN where the model allows it: no place in a z-score
            return None
        state.recent.append((matrix, z))
        state.recent_rows += len(matrix)
        state.z_total += z
        while state.recent_rows - len(state.recent[0][0]) >= cfg.sample_rows:
            old, old_z = state.recent.popleft()
            state.recent_rows -= len(old)
            state.z_total -= old_z
        if not ready or state.recent_rows < cfg.spread_min_rows:
            return None
        score = state.z_total / (state.recent_rows * width)
        if score > cfg.spread_factor:
            return (
                f"spread: the token's inputs score {score:.1f} in mean squared z against real "
                f"traffic (real traffic 1, limit {cfg.spread_factor:g})"
            )
        return None

    def _pool(
        self, state: _TokenState, deployment_key: str, matrix: np.ndarray[Any, Any]
    ) -> _Reference:
        """The deployment's reference, first pooled from the tokens' traffic if not given."""
        cfg = self.config
        ref = self._refs.setdefault(deployment_key, _Reference())
        if not ref.fixed and ref.mean is None:
            share = cfg.reference_rows // 4 - state.pooled
            if share > 0 and math.isfinite(float(matrix.sum())):
                ref.pool.append(matrix[:share])
                state.pooled += len(ref.pool[-1])
                ref.pooled += len(ref.pool[-1])
            if ref.pooled >= cfg.reference_rows and len({m.shape[1] for m in ref.pool}) == 1:
                built = _reference(np.concatenate(ref.pool))
                ref.mean, ref.std, ref.pool = built.mean, built.std, []
                ref.version = next(_VERSIONS)
        return ref


def _matrix(rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
    array = np.asarray(rows)
    if array.dtype.kind not in "biuf" or array.ndim not in (1, 2) or not array.size:
        return None
    return np.asarray(array.reshape(len(array), -1), dtype=np.float64)


def _reference(matrix: np.ndarray[Any, Any], fixed: bool = False) -> _Reference:
    std = matrix.std(axis=0)
    # A constant feature gets unit scale so that any change in it counts, without dividing by 0.
    std = np.where(std > 0, std, 1.0)
    return _Reference(mean=matrix.mean(axis=0), std=std, fixed=fixed)


def retry_after_header(decision: Decision) -> str:
    """The ``Retry-After`` value (whole seconds, at least 1) for a refusal."""
    return str(max(1, math.ceil(decision.retry_after_s)))
