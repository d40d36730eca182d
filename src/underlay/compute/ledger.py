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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from sqlalchemy import CursorResult, Select, case, func, select, update
from sqlalchemy.orm import Session

from underlay.compute.inventory import AcceleratorInfo
from underlay.compute.models import Alert, Budget, Job, JobAttempt
from underlay.compute.scheduler.snapshot import WHOLE, PowerModel
from underlay.config import ComputeSettings, Settings
from underlay.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from underlay.store.db import Scope
from underlay.store.models import Project, User
from underlay.store.types import utcnow

if TYPE_CHECKING:
    AnySelect = Select[*tuple[Any, ...]]

PowerSample = tuple[float, float]
"""(epoch seconds, watts attributed to the attempt: the sum over the GPUs it holds, each times
the share of it that the attempt holds)."""


def _compute(settings: Settings | ComputeSettings) -> ComputeSettings:
    return settings.compute if isinstance(settings, Settings) else settings


def _utc(when: dt.datetime, name: str) -> dt.datetime:
    if when.tzinfo is None:
        raise InvalidInput(f"{name} must carry a time zone (UTC), got naive {when.isoformat()}")
    return when.astimezone(dt.UTC)


# -- prices and intensity -------------------------------------------------------------------


def price_for(settings: Settings | ComputeSettings, gpu_type: str | None) -> float:
    """Price per hour of one whole accelerator of ``gpu_type`` (``'cpu'``: of one CPU core).

    Falls back to the ``'default'`` entry for accelerator types not listed.
    """
    prices = _compute(settings).prices
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
    compute = _compute(settings)
    hour = _utc(when, "when").hour
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
    compute = _compute(settings)
    start, end = _utc(started_at, "started_at"), _utc(ended_at, "ended_at")
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
    ended = attempt.ended_at or _utc(now, "now")
    started = attempt.started_at or ended - dt.timedelta(seconds=report.wall_s)
    sims = [
        sim
        for sim in _compute(settings).simulated_accelerators
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


def _scope(session: Session) -> Scope:
    scope: Scope | None = session.info.get("scope")
    if scope is None:
        raise PermissionDenied("ledger query without a tenant scope refused")
    return scope


def _check_scope(session: Session, project_id: int | None) -> None:
    scope = _scope(session)
    if project_id is None and scope.project_ids is not None:
        raise PermissionDenied("only an unscoped (admin) session may touch cluster-wide rows")
    if project_id is not None and not scope.allows(project_id):
        raise PermissionDenied(f"project {project_id} is outside this session's scope")


def bill_attempt(session: Session, attempt: JobAttempt, usage: Usage) -> bool:
    """Write ``usage`` into ``attempt`` and mark it billed, once: True if this call billed it,
    False if it was billed already (its usage is left as it was). ``attempt`` is refreshed."""
    _check_scope(session, attempt.project_id)
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


def _ended() -> Any:
    return func.coalesce(JobAttempt.ended_at, JobAttempt.admitted_at)


def _scoped(stmt: AnySelect, session: Session) -> AnySelect:
    ids = _scope(session).project_ids
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
        stmt = stmt.where(_ended() >= _utc(since, "since"))
    if until is not None:
        stmt = stmt.where(_ended() < _utc(until, "until"))
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


# -- budgets --------------------------------------------------------------------------------

BudgetState = Literal["ok", "warn", "blocked"]


def _project(session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None or not _scope(session).allows(project_id):
        raise NotFound(f"project {project_id} does not exist")
    return project


def set_budget(
    session: Session,
    project_id: int,
    gpu_hours_per_month: float | None = None,
    money_per_month: float | None = None,
    warn_fraction: float = 0.8,
) -> Budget:
    """Set (or replace) a project's monthly budget; None for a limit means none of that kind.

    Past ``warn_fraction`` of a limit new jobs are accepted with a warning; at the limit they
    are refused (see :func:`budget_status`).
    """
    _project(session, project_id)
    for name, value in (
        ("gpu_hours_per_month", gpu_hours_per_month),
        ("money_per_month", money_per_month),
    ):
        if value is not None and (value < 0 or math.isnan(value)):
            raise InvalidInput(f"{name} must not be negative, got {value}")
    if not 0.0 < warn_fraction <= 1.0:
        raise InvalidInput(f"warn_fraction is a fraction in (0, 1], got {warn_fraction}")
    budget = session.scalars(select(Budget).where(Budget.project_id == project_id)).first()
    if budget is None:
        budget = Budget(project_id=project_id)
        session.add(budget)
    budget.gpu_hours_per_month = gpu_hours_per_month
    budget.money_per_month = money_per_month
    budget.warn_fraction = warn_fraction
    session.flush()
    return budget


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A project's use of its monthly budget so far. ``fraction`` is the larger of the used
    fractions of its limits (None without a budget)."""

    project_id: int
    project: str
    month_start: dt.datetime
    gpu_hours_used: float
    gpu_hours_limit: float | None
    money_used: float
    money_limit: float | None
    warn_fraction: float | None
    fraction: float | None
    state: BudgetState
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def raise_if_blocked(self) -> None:
        """Raise :class:`~underlay.errors.Conflict` with the message when blocked."""
        if self.state == "blocked":
            raise Conflict(
                f"{self.message}; new jobs are refused until next month "
                "unless an admin raises the budget"
            )


def month_start(now: dt.datetime) -> dt.datetime:
    """Midnight UTC on the first of ``now``'s month."""
    return _utc(now, "now").replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def budget_status(
    session: Session,
    project_id: int,
    now: dt.datetime,
    settings: Settings | ComputeSettings | None = None,
) -> BudgetStatus:
    """Month-to-date use against the project's budget: billed attempts that ended this month,
    plus attempts still unbilled (running) for their time this month. Pass ``settings`` to
    count those attempts' money too (their GPU-hours always count)."""
    project = _project(session, project_id)
    start = month_start(now)
    gpu_s, money = session.execute(
        select(
            func.coalesce(func.sum(JobAttempt.gpu_s), 0.0),
            func.coalesce(func.sum(JobAttempt.cost), 0.0),
        ).where(
            JobAttempt.project_id == project_id,
            JobAttempt.billed.is_(True),
            _ended() >= start,
        )
    ).one()
    run_gpu_s, run_money = _unbilled_so_far(session, project_id, start, _utc(now, "now"), settings)
    gpu_hours = (float(gpu_s) + run_gpu_s) / 3600.0
    used_money = float(money) + run_money
    budget = session.scalars(select(Budget).where(Budget.project_id == project_id)).first()
    currency = f" {_compute(settings).currency}" if settings is not None else ""
    fraction, state, message = _judge(project.name, budget, gpu_hours, used_money, currency)
    return BudgetStatus(
        project_id=project_id,
        project=project.name,
        month_start=start,
        gpu_hours_used=gpu_hours,
        gpu_hours_limit=budget.gpu_hours_per_month if budget else None,
        money_used=used_money,
        money_limit=budget.money_per_month if budget else None,
        warn_fraction=budget.warn_fraction if fraction is not None and budget else None,
        fraction=fraction,
        state=state,
        message=message,
    )


def _judge(
    project: str, budget: Budget | None, gpu_hours: float, money: float, currency: str
) -> tuple[float | None, BudgetState, str]:
    """The used fraction of the tighter limit, the state, and the message saying so."""
    dims = []  # (fraction, what)
    if budget is not None and budget.gpu_hours_per_month is not None:
        limit = budget.gpu_hours_per_month
        dims.append((_fraction(gpu_hours, limit), f"used {gpu_hours:.1f} of {limit:g} GPU-hours"))
    if budget is not None and budget.money_per_month is not None:
        limit = budget.money_per_month
        dims.append((_fraction(money, limit), f"spent {money:.2f} of {limit:.2f}{currency}"))
    if budget is None or not dims:
        return None, "ok", f"project {project} has no budget"
    fraction, what = max(dims, key=lambda d: d[0])
    message = f"project {project} {what} this month ({fraction:.0%})"
    if fraction >= 1.0:
        return fraction, "blocked", message
    if fraction >= budget.warn_fraction:
        return fraction, "warn", f"{message}, past the {budget.warn_fraction:.0%} warning"
    return fraction, "ok", message


def _fraction(used: float, limit: float) -> float:
    if limit > 0:
        return used / limit
    return 1.0  # a zero budget allows nothing


def _unbilled_so_far(
    session: Session,
    project_id: int,
    start: dt.datetime,
    now: dt.datetime,
    settings: Settings | ComputeSettings | None,
) -> tuple[float, float]:
    """GPU-seconds and money of started, unbilled attempts between ``start`` and ``now``."""
    rows = session.execute(
        select(
            JobAttempt.started_at,
            JobAttempt.ended_at,
            JobAttempt.gpu_share_milli,
            JobAttempt.cpu_milli,
            JobAttempt.gpu_type,
        ).where(
            JobAttempt.project_id == project_id,
            JobAttempt.billed.is_(False),
            JobAttempt.started_at.is_not(None),
        )
    )
    gpu_s = money = 0.0
    for started, ended, share, cpu_milli, gpu_type in rows:
        if started is None:
            continue
        seconds = (min(ended or now, now) - max(started, start)).total_seconds()
        if seconds <= 0:
            continue
        gpu_s += seconds * share / WHOLE
        if settings is not None:
            if share:
                money += seconds * share / WHOLE / 3600.0 * price_for(settings, gpu_type)
            money += seconds * cpu_milli / 1000.0 / 3600.0 * price_for(settings, "cpu")
    return gpu_s, money


# -- alerts ---------------------------------------------------------------------------------


def record_alert(
    session: Session,
    kind: str,
    message: str,
    project_id: int | None = None,
    job_id: int | None = None,
    subject: str = "",
) -> tuple[Alert, bool]:
    """Raise an alert, unless one of the same kind, subject and project is still unresolved:
    then that one gets the new message. Returns the alert and whether it is new (notify then).
    An alert without a project is cluster-wide and needs an unscoped session."""
    _check_scope(session, project_id)
    if not kind:
        raise InvalidInput("an alert needs a kind, e.g. 'idle-gpu'")
    same_project = (
        Alert.project_id.is_(None) if project_id is None else Alert.project_id == project_id
    )
    existing = session.scalars(
        _alerts_in_scope(session).where(
            Alert.kind == kind,
            Alert.subject == subject,
            same_project,
            Alert.resolved_at.is_(None),
        )
    ).first()
    if existing is not None:
        existing.message = message[:1000]
        session.flush()
        return existing, False
    alert = Alert(
        kind=kind,
        subject=subject[:255],
        message=message[:1000],
        project_id=project_id,
        job_id=job_id,
    )
    session.add(alert)
    session.flush()
    return alert, True


def _alerts_in_scope(session: Session) -> Select[Alert]:
    stmt = select(Alert)
    ids = _scope(session).project_ids
    if ids is not None:
        stmt = stmt.where(Alert.project_id.in_(sorted(ids)))
    return stmt


def list_alerts(
    session: Session, *, project_id: int | None = None, unresolved: bool = True
) -> list[Alert]:
    """Alerts the session may see (a scoped session sees its projects' only), newest first."""
    stmt = _alerts_in_scope(session)
    if project_id is not None:
        stmt = stmt.where(Alert.project_id == project_id)
    if unresolved:
        stmt = stmt.where(Alert.resolved_at.is_(None))
    return list(session.scalars(stmt.order_by(Alert.created_at.desc(), Alert.id.desc())))


def resolve_alert_by_id(session: Session, alert_id: int, now: dt.datetime | None = None) -> Alert:
    """Mark an alert resolved (again resolving one is harmless)."""
    alert = session.scalars(_alerts_in_scope(session).where(Alert.id == alert_id)).first()
    if alert is None:
        raise NotFound(f"alert {alert_id} does not exist")
    if alert.resolved_at is None:
        alert.resolved_at = _utc(now, "now") if now is not None else utcnow()
        session.flush()
    return alert


def resolve_alert(session: Session, kind: str, subject: str, now: dt.datetime | None = None) -> int:
    """Resolve the unresolved alerts of ``kind`` about ``subject`` (the condition cleared);
    returns how many."""
    alerts = session.scalars(
        _alerts_in_scope(session).where(
            Alert.kind == kind, Alert.subject == subject, Alert.resolved_at.is_(None)
        )
    ).all()
    for alert in alerts:
        alert.resolved_at = _utc(now, "now") if now is not None else utcnow()
    session.flush()
    return len(alerts)


# -- idle GPUs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One accelerator's utilisation at ``at`` (epoch seconds); None: unknown (e.g. MIG)."""

    node: str
    index: int
    utilization: float | None
    at: float

    @classmethod
    def of(cls, node: str, acc: AcceleratorInfo, at: float) -> GpuSample:
        """A probed accelerator's sample; under MIG NVML cannot tell utilisation: unknown."""
        return cls(node, acc.index, None if acc.mig else acc.utilization, at)


@dataclass(frozen=True, slots=True)
class GpuHold:
    """A running attempt holds ``gpu_indexes`` on ``node`` since ``since`` (epoch seconds)."""

    attempt_id: int
    node: str
    gpu_indexes: tuple[int, ...]
    since: float


@dataclass(frozen=True, slots=True)
class IdleGpu:
    """A running attempt whose GPUs ``idle_indexes`` have been idle ``idle_s`` seconds."""

    attempt_id: int
    node: str
    idle_indexes: tuple[int, ...]
    idle_s: float

    @property
    def subject(self) -> str:
        """The alert subject (one alert per attempt, de-duplicated)."""
        return f"attempt {self.attempt_id}"

    def message(self, threshold: float) -> str:
        gpus = ", ".join(str(i) for i in self.idle_indexes)
        return (
            f"attempt {self.attempt_id} holds GPU {gpus} on {self.node} at or below "
            f"{threshold:.0%} utilisation for {self.idle_s / 60:.0f} min; "
            "free it if it is not needed"
        )


@dataclass
class IdleTracker:
    """Per GPU ``(node, index)``: since when it has been idle, and when it was last seen.

    Keep one between ticks; it only grows with the GPUs sampled, and a GPU unseen for longer
    than the idle period starts afresh.
    """

    low_since: dict[tuple[str, int], float] = field(default_factory=dict)
    last_seen: dict[tuple[str, int], float] = field(default_factory=dict)


def idle_gpu_alerts(
    settings: Settings | ComputeSettings,
    tracker: IdleTracker,
    samples: Iterable[GpuSample],
    holds: Iterable[GpuHold],
) -> list[IdleGpu]:
    """Feed ``samples`` into ``tracker`` and return the held GPUs idle for too long.

    A GPU is idle while its utilisation is at or below ``compute.idle_gpu_utilization``; an
    attempt is flagged when one of its GPUs has been idle, since it took the GPU, for at least
    ``compute.idle_gpu_after_s`` of sample time (the clock of the samples, not the wall).
    """
    compute = _compute(settings)
    after = compute.idle_gpu_after_s
    for s in sorted(samples, key=lambda s: s.at):
        key = (s.node, s.index)
        previous = tracker.last_seen.get(key)
        gap = previous is None or s.at - previous > after
        tracker.last_seen[key] = s.at
        if s.utilization is None or s.utilization > compute.idle_gpu_utilization:
            tracker.low_since.pop(key, None)
        elif gap or key not in tracker.low_since:
            tracker.low_since[key] = s.at
    flagged = []
    for hold in holds:
        idle: list[tuple[int, float]] = []
        for index in hold.gpu_indexes:
            key = (hold.node, index)
            if key in tracker.low_since:
                seconds = tracker.last_seen[key] - max(tracker.low_since[key], hold.since)
                if seconds >= after:
                    idle.append((index, seconds))
        if idle:
            flagged.append(
                IdleGpu(
                    hold.attempt_id,
                    hold.node,
                    tuple(i for i, _ in idle),
                    min(s for _, s in idle),
                )
            )
    return flagged
