"""The ledger: what each job attempt used and cost, summed per project, user and time; budgets;
alerts; and idle-GPU detection.

Design decisions:

* **Usage is computed per attempt, by a pure function** (:func:`attempt_usage`), from what the
  node agent observed: wall time, measured CPU seconds, the GPU share held, power samples where
  NVML measured them, RAPL energy where readable. What was not measured is estimated from a
  power model and labelled ``energy_estimated``. GPU time and cost follow the *allocation*
  (you pay for a GPU you hold, busy or not); CPU cost follows the larger of allocation and use.
* **Billing is exactly once per attempt.** :func:`bill_attempt` is a conditional
  ``UPDATE ... WHERE billed = false``, so two callers racing (the agent's report and the
  reconciler) write the usage once. A retry is a new attempt, billed on its own.
* **Tenant scope.** ``job_attempts`` and ``alerts`` carry a plain ``project_id`` (attempts
  outlive their job's scope checks on purpose), so every query here filters by the session's
  :class:`~underlay.store.db.Scope` explicitly.
* **Periods.** An attempt counts in the period in which it ended. Budgets are per calendar
  month (UTC) and also count attempts still running, so a long job cannot overrun a budget
  unseen until it ends.
* **Carbon** is energy times grid intensity. With an hourly profile
  (``compute.grid_intensity_hourly``) the power curve is integrated hour by hour, split at
  hour boundaries.

Units are in the names: ``_s`` seconds, ``_kwh``, ``_g`` grams CO2e, ``_j`` joules; money is in
``compute.currency``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from sqlalchemy import CursorResult, Select, case, func, select, update
from sqlalchemy.orm import Session

from underlay.compute.models import Job, JobAttempt
from underlay.compute.scheduler.snapshot import WHOLE, PowerModel
from underlay.compute.schemas import MAX_REPORTED_S
from underlay.config import ComputeSettings, Settings
from underlay.errors import InvalidInput, NotFound, PermissionDenied
from underlay.store.db import Scope
from underlay.store.models import Project, User

if TYPE_CHECKING:
    AnySelect = Select[*tuple[Any, ...]]

PowerSample = tuple[float, float]

"""(epoch seconds, watts attributed to the attempt: the sum over the GPUs it holds, each times
the share of it that the attempt holds)."""


def compute_settings(settings: Settings | ComputeSettings) -> ComputeSettings:
    return settings.compute if isinstance(settings, Settings) else settings


def as_utc(when: dt.datetime, name: str) -> dt.datetime:
    if when.tzinfo is None:
        raise InvalidInput(f"{name} must carry a time zone (UTC), got naive {when.isoformat()}")
    return when.astimezone(dt.UTC)


# -- prices and intensity -------------------------------------------------------------------


def price_for(settings: Settings | ComputeSettings, gpu_type: str | None) -> float:
    """Price per hour of one whole accelerator of ``gpu_type`` (``'cpu'``: of one CPU core).

    Falls back to the ``'default'`` entry for accelerator types not listed.
    """
    prices = compute_settings(settings).prices
    key = gpu_type or "default"
    if key in prices:
        return prices[key]
    if key != "cpu" and "default" in prices:
        return prices["default"]
    raise InvalidInput(
        f"the price table has no entry for {key!r} and no 'default'; "
        f"add one to compute.prices (it has {sorted(prices)})"
    )


def intensity_at(settings: Settings | ComputeSettings, when: dt.datetime) -> float:
    """Grid carbon intensity (gCO2e per kWh) at ``when``: the UTC hour's figure if an hourly
    profile is configured, else the flat one."""
    compute = compute_settings(settings)
    hour = as_utc(when, "when").hour
    if compute.grid_intensity_hourly is not None:
        return compute.grid_intensity_hourly[hour]
    return compute.grid_intensity_g_per_kwh


# -- usage of one attempt -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """What one attempt used: the ``job_attempts`` usage columns."""

    wall_s: float
    cpu_s: float
    gpu_s: float
    energy_kwh: float
    energy_estimated: bool
    cost: float
    carbon_g: float

    @property
    def gpu_hours(self) -> float:
        return self.gpu_s / 3600.0

    @property
    def carbon_kg(self) -> float:
        return self.carbon_g / 1000.0


def attempt_usage(
    settings: Settings | ComputeSettings,
    *,
    started_at: dt.datetime,
    ended_at: dt.datetime,
    cpu_s: float,
    cpu_milli: int = 0,
    gpu_share_milli: int = 0,
    gpu_type: str | None = None,
    gpu_power_samples: Sequence[PowerSample] = (),
    gpu_energy_kwh: float | None = None,
    gpu_power_model: PowerModel | None = None,
    gpu_utilization: float = 1.0,
    cpu_energy_j: float | None = None,
) -> Usage:
    """Usage of one attempt from ``started_at`` to ``ended_at`` (now, for one still running).

    - ``cpu_s``: CPU seconds measured over the process tree; ``cpu_milli``: CPUs allocated
      (thousandths, all workers). CPU cost is ``max(allocated x wall, cpu_s)`` core-hours.
    - ``gpu_share_milli``: accelerator thousandths held over all workers (2 whole GPUs: 2000);
      ``gpu_s = wall_s x share``.
    - GPU energy, measured: the trapezoid integral of ``gpu_power_samples``, or
      ``gpu_energy_kwh`` (a total, taken as spread evenly over the run); else estimated as
      ``share x (idle + (busy - idle) x gpu_utilization)`` of ``gpu_power_model`` over the
      wall time (utilisation unknown counts as 1.0, an upper bound; no model: 0).
    - CPU energy: ``cpu_energy_j`` (this attempt's part of a RAPL delta) when given, else
      ``cpu_s x compute.cpu_watts_per_core`` (estimated).
    """
    compute = compute_settings(settings)
    start, end = as_utc(started_at, "started_at"), as_utc(ended_at, "ended_at")
    t0, t1 = start.timestamp(), end.timestamp()
    if t1 < t0:
        raise InvalidInput(
            f"attempt ends ({end.isoformat()}) before it starts ({start.isoformat()})"
        )
    _non_negative(cpu_s=cpu_s, cpu_milli=cpu_milli, gpu_share_milli=gpu_share_milli)
    if not 0.0 <= gpu_utilization <= 1.0:
        raise InvalidInput(f"gpu_utilization is a fraction 0..1, got {gpu_utilization}")
    wall_s = t1 - t0
    share = gpu_share_milli / WHOLE
    gpu_s = wall_s * share
    # the attempt's power curve, for energy and hourly carbon
    pieces, estimated = _gpu_curve(
        t0, t1, share, gpu_power_samples, gpu_energy_kwh, gpu_power_model, gpu_utilization
    )
    if cpu_energy_j is None:
        estimated = True
        cpu_energy_j = cpu_s * compute.cpu_watts_per_core
    _non_negative(cpu_energy_j=cpu_energy_j)
    if cpu_energy_j > 0:
        pieces.append(_constant_energy(t0, t1, cpu_energy_j))

    energy_j = sum(p.joules() for p in pieces)
    carbon_g = sum(_piece_carbon_g(compute, p) for p in pieces)
    cost = 0.0
    if share > 0:
        cost += gpu_s / 3600.0 * price_for(compute, gpu_type)
    core_s = max(cpu_milli / 1000.0 * wall_s, cpu_s)
    if core_s > 0:
        cost += core_s / 3600.0 * price_for(compute, "cpu")
    return Usage(
        wall_s=wall_s,
        cpu_s=cpu_s,
        gpu_s=gpu_s,
        energy_kwh=energy_j / 3.6e6,
        energy_estimated=estimated,
        cost=cost,
        carbon_g=carbon_g,
    )


class AttemptReport(Protocol):
    """What a node agent reports about an ended attempt (``schemas.AttemptEnded`` is one)."""

    @property
    def wall_s(self) -> float: ...
    @property
    def cpu_s(self) -> float: ...
    @property
    def energy_kwh(self) -> float | None: ...


def attempt_usage_for(
    attempt: JobAttempt,
    report: AttemptReport,
    settings: Settings | ComputeSettings,
    now: dt.datetime,
) -> Usage:
    """:func:`attempt_usage` of a stored attempt from its agent's report.

    The run is ``started_at``..``ended_at`` (``now`` if unset; an attempt that never started
    ran ``report.wall_s`` before its end). ``report.energy_kwh`` is the GPU energy the agent
    measured (None: estimate it from the power model of the configured simulated accelerators
    of the attempt's type, if any).
    """
    _check_report(report)
    ended = attempt.ended_at or as_utc(now, "now")
    started = attempt.started_at or ended - dt.timedelta(seconds=report.wall_s)
    sims = [
        sim
        for sim in compute_settings(settings).simulated_accelerators
        if attempt.gpu_type in (None, sim.type)
    ]
    model = PowerModel(sims[0].idle_watts, sims[0].busy_watts) if sims else None
    return attempt_usage(
        settings,
        started_at=started,
        ended_at=max(started, ended),
        cpu_s=report.cpu_s,
        cpu_milli=attempt.cpu_milli,
        gpu_share_milli=attempt.gpu_share_milli,
        gpu_type=attempt.gpu_type,
        gpu_energy_kwh=report.energy_kwh if attempt.gpu_share_milli else None,
        gpu_power_model=model,
    )


def _gpu_curve(
    t0: float,
    t1: float,
    share: float,
    samples: Sequence[PowerSample],
    energy_kwh: float | None,
    model: PowerModel | None,
    utilization: float,
) -> tuple[list[_Piece], bool]:
    """The GPU power curve over ``t0``..``t1`` and whether it is an estimate."""
    if samples and energy_kwh is not None:
        raise InvalidInput("give GPU power samples or a GPU energy total, not both")
    if samples:
        return _sample_pieces(samples), False
    if energy_kwh is not None:
        _non_negative(gpu_energy_kwh=energy_kwh)
        return [_constant_energy(t0, t1, energy_kwh * 3.6e6)], False
    if share == 0:
        return [], False
    if model is None:
        return [], True
    watts = share * (model.idle_watts + (model.busy_watts - model.idle_watts) * utilization)
    return [_Piece(t0, t1, watts, watts)], True


def integrate_power_kwh(samples: Sequence[PowerSample]) -> float:
    """Energy (kWh) of ``(epoch seconds, watts)`` samples by the trapezoid rule (0 for fewer
    than two samples)."""
    return sum(p.joules() for p in _sample_pieces(samples)) / 3.6e6


def _non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0 or math.isnan(value):
            raise InvalidInput(f"{name} must not be negative, got {value}")
        if math.isinf(value):
            raise InvalidInput(f"{name} must be a finite number, got {value}")


def _check_report(report: AttemptReport) -> None:
    """An agent's figures are input: finite, non-negative, and a run no longer than
    :data:`MAX_REPORTED_S` (a larger one overflows date arithmetic)."""
    figures = {"wall_s": report.wall_s, "cpu_s": report.cpu_s}
    _non_negative(**figures)
    if report.energy_kwh is not None:
        _non_negative(energy_kwh=report.energy_kwh)
    for name, value in figures.items():
        if value > MAX_REPORTED_S:
            raise InvalidInput(f"{name} must be at most {MAX_REPORTED_S:.0f} s, got {value}")


@dataclass(frozen=True, slots=True)
class _Piece:
    """Power rising linearly from ``w0`` at ``t0`` to ``w1`` at ``t1`` (epoch seconds)."""

    t0: float
    t1: float
    w0: float
    w1: float

    def joules(self) -> float:
        return (self.w0 + self.w1) / 2.0 * (self.t1 - self.t0)

    def watts_at(self, t: float) -> float:
        if self.t1 == self.t0:
            return self.w0
        return self.w0 + (self.w1 - self.w0) * (t - self.t0) / (self.t1 - self.t0)


def _sample_pieces(samples: Sequence[PowerSample]) -> list[_Piece]:
    ordered = sorted(samples)
    for t, watts in ordered:
        if watts < 0 or math.isnan(watts) or math.isnan(t):
            raise InvalidInput(f"power sample ({t}, {watts}) is not a time and a positive wattage")
    return [_Piece(a[0], b[0], a[1], b[1]) for a, b in itertools.pairwise(ordered)]


def _constant_energy(t0: float, t1: float, joules: float) -> _Piece:
    if t1 <= t0:  # no duration: put the energy in one instant's hour
        return _Piece(t0, t0 + 1.0, joules, joules)
    watts = joules / (t1 - t0)
    return _Piece(t0, t1, watts, watts)


def _piece_carbon_g(compute: ComputeSettings, piece: _Piece) -> float:
    hourly = compute.grid_intensity_hourly
    if hourly is None:
        return piece.joules() / 3.6e6 * compute.grid_intensity_g_per_kwh
    grams = 0.0
    t = piece.t0
    while t < piece.t1:
        boundary = min(piece.t1, (math.floor(t / 3600.0) + 1) * 3600.0)
        part = _Piece(t, boundary, piece.watts_at(t), piece.watts_at(boundary))
        grams += part.joules() / 3.6e6 * hourly[int(t // 3600.0) % 24]
        t = boundary
    return grams


# -- billing --------------------------------------------------------------------------------


def scope_of(session: Session) -> Scope:
    scope: Scope | None = session.info.get("scope")
    if scope is None:
        raise PermissionDenied("ledger query without a tenant scope refused")
    return scope


def check_scope(session: Session, project_id: int | None) -> None:
    scope = scope_of(session)
    if project_id is None and scope.project_ids is not None:
        raise PermissionDenied("only an unscoped (admin) session may touch cluster-wide rows")
    if project_id is not None and not scope.allows(project_id):
        raise PermissionDenied(f"project {project_id} is outside this session's scope")


def bill_attempt(session: Session, attempt: JobAttempt, usage: Usage) -> bool:
    """Write ``usage`` into ``attempt`` and mark it billed, once: True if this call billed it,
    False if it was billed already (its usage is left as it was). ``attempt`` is refreshed."""
    check_scope(session, attempt.project_id)
    stmt = (
        update(JobAttempt)
        .where(JobAttempt.id == attempt.id, JobAttempt.billed.is_(False))
        .values(
            wall_s=usage.wall_s,
            cpu_s=usage.cpu_s,
            gpu_s=usage.gpu_s,
            energy_kwh=usage.energy_kwh,
            energy_estimated=usage.energy_estimated,
            cost=usage.cost,
            carbon_g=usage.carbon_g,
            billed=True,
        )
        .execution_options(synchronize_session=False)
    )
    result = cast(CursorResult[Any], session.execute(stmt))
    billed_now = result.rowcount == 1
    if not billed_now and session.get(JobAttempt, attempt.id) is None:
        raise NotFound(f"job attempt {attempt.id} does not exist")
    if attempt in session:
        session.refresh(attempt)
    return billed_now


# -- summaries ------------------------------------------------------------------------------

GroupBy = Literal["project", "user", "job"]


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Billed usage summed over a group (or over everything with no grouping).

    ``key`` names the group (project name, user name, job name; None for the total) and
    ``project_id``/``user_id``/``job_id`` identify it in its dimension (None otherwise).
    """

    key: str | None
    project_id: int | None
    user_id: int | None
    job_id: int | None
    attempts: int
    jobs: int
    wall_s: float
    cpu_hours: float
    gpu_hours: float
    energy_kwh: float
    energy_estimated: bool
    cost: float
    carbon_kg: float

    @property
    def wall_hours(self) -> float:
        return self.wall_s / 3600.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"wall_hours": self.wall_hours}


def ended_column() -> Any:
    return func.coalesce(JobAttempt.ended_at, JobAttempt.admitted_at)


def _scoped(stmt: AnySelect, session: Session) -> AnySelect:
    ids = scope_of(session).project_ids
    if ids is not None:
        stmt = stmt.where(JobAttempt.project_id.in_(sorted(ids)))
    return stmt


def usage_summary(
    session: Session,
    *,
    project_id: int | None = None,
    user_id: int | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    group_by: GroupBy | None = None,
) -> list[UsageRow]:
    """Billed usage of attempts that ended in ``[since, until)``, within the session's scope,
    optionally of one project or user; one row per group, most expensive first (one
    ``total`` row, possibly of zeros, without grouping)."""
    if group_by not in (None, "project", "user", "job"):
        raise InvalidInput(f"group_by must be project, user or job, got {group_by!r}")
    keys: dict[str, Any] = {
        "project": (JobAttempt.project_id, Project.name),
        "user": (JobAttempt.user_id, User.name),
        "job": (JobAttempt.job_id, Job.name),
    }
    group_cols = keys[group_by] if group_by else ()
    stmt: AnySelect = select(
        *group_cols,
        func.count(JobAttempt.id),
        func.count(func.distinct(JobAttempt.job_id)),
        func.coalesce(func.sum(JobAttempt.wall_s), 0.0),
        func.coalesce(func.sum(JobAttempt.cpu_s), 0.0),
        func.coalesce(func.sum(JobAttempt.gpu_s), 0.0),
        func.coalesce(func.sum(JobAttempt.energy_kwh), 0.0),
        func.coalesce(func.max(case((JobAttempt.energy_estimated, 1), else_=0)), 0),
        func.coalesce(func.sum(JobAttempt.cost), 0.0),
        func.coalesce(func.sum(JobAttempt.carbon_g), 0.0),
    ).where(JobAttempt.billed.is_(True))
    if group_by == "project":
        stmt = stmt.join(Project, Project.id == JobAttempt.project_id)
    elif group_by == "user":
        stmt = stmt.outerjoin(User, User.id == JobAttempt.user_id)
    elif group_by == "job":
        stmt = stmt.join(Job, Job.id == JobAttempt.job_id)
    stmt = _scoped(stmt, session)
    if project_id is not None:
        stmt = stmt.where(JobAttempt.project_id == project_id)
    if user_id is not None:
        stmt = stmt.where(JobAttempt.user_id == user_id)
    if since is not None:
        stmt = stmt.where(ended_column() >= as_utc(since, "since"))
    if until is not None:
        stmt = stmt.where(ended_column() < as_utc(until, "until"))
    if group_cols:
        stmt = stmt.group_by(*group_cols)
    rows = [_usage_row(group_by, tuple(r)) for r in session.execute(stmt)]
    return sorted(rows, key=lambda r: (-r.cost, r.key or ""))


def _usage_row(group_by: GroupBy | None, r: tuple[Any, ...]) -> UsageRow:
    key, name = (r[0], r[1]) if group_by else (None, None)
    n = 2 if group_by else 0
    attempts, jobs, wall, cpu, gpu, kwh, est, cost, carbon = r[n:]
    label = None
    if group_by is not None:
        label = str(name) if name else f"{group_by} {key}" if key is not None else f"no {group_by}"
    return UsageRow(
        key=label,
        project_id=key if group_by == "project" else None,
        user_id=key if group_by == "user" else None,
        job_id=key if group_by == "job" else None,
        attempts=int(attempts),
        jobs=int(jobs),
        wall_s=float(wall),
        cpu_hours=float(cpu) / 3600.0,
        gpu_hours=float(gpu) / 3600.0,
        energy_kwh=float(kwh),
        energy_estimated=bool(est),
        cost=float(cost),
        carbon_kg=float(carbon) / 1000.0,
    )


@dataclass(frozen=True, slots=True)
class DayUsage:
    """Billed usage of the attempts of one project that ended on one UTC day."""

    day: dt.date
    gpu_hours: float
    energy_kwh: float
    cost: float
    carbon_kg: float


def usage_by_day(
    session: Session, project_id: int, *, since: dt.datetime, until: dt.datetime
) -> list[DayUsage]:
    """One row per UTC day in ``[since, until)`` (zeros included), for charts over time.

    Only the four summed columns of the window's attempts are read; the days are bucketed
    here, the same on SQLite and PostgreSQL."""
    since, until = as_utc(since, "since"), as_utc(until, "until")
    check_scope(session, project_id)
    ended = ended_column()
    stmt = select(
        ended, JobAttempt.gpu_s, JobAttempt.energy_kwh, JobAttempt.cost, JobAttempt.carbon_g
    ).where(
        JobAttempt.project_id == project_id,
        JobAttempt.billed.is_(True),
        ended >= since,
        ended < until,
    )
    first = since.date()
    days = max(1, (until.date() - first).days + (1 if until.time() != dt.time() else 0))
    sums = [[0.0, 0.0, 0.0, 0.0] for _ in range(days)]
    for when, gpu_s, kwh, cost, carbon in session.execute(stmt):
        index = (as_utc(when, "ended").date() - first).days
        if 0 <= index < days:
            bucket = sums[index]
            bucket[0] += float(gpu_s or 0) / 3600.0
            bucket[1] += float(kwh or 0)
            bucket[2] += float(cost or 0)
            bucket[3] += float(carbon or 0) / 1000.0
    return [
        DayUsage(first + dt.timedelta(days=i), gpu_h, kwh, cost, carbon)
        for i, (gpu_h, kwh, cost, carbon) in enumerate(sums)
    ]
