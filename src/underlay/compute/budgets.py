"""Monthly budgets per project: GPU-hours or money; warn near the limit, block past it.

Running, unbilled attempts count toward the month so far, so a long job cannot overrun a
budget unseen.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from underlay.compute.ledger import as_utc, compute_settings, ended_column, price_for, scope_of
from underlay.compute.models import Budget, JobAttempt
from underlay.compute.scheduler.snapshot import WHOLE
from underlay.config import ComputeSettings, Settings
from underlay.errors import Conflict, InvalidInput, NotFound
from underlay.store.models import Project

# -- budgets --------------------------------------------------------------------------------

BudgetState = Literal["ok", "warn", "blocked"]


def _project(session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None or not scope_of(session).allows(project_id):
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


def has_limits(session: Session, project_id: int) -> bool:
    """Whether the project's budget limits anything: without a limit, no use of the month can
    block or warn, so a submission need not add the month's attempts up (thousands of rows in
    a busy project) to learn it."""
    budget = session.scalars(select(Budget).where(Budget.project_id == project_id)).first()
    return budget is not None and (
        budget.gpu_hours_per_month is not None or budget.money_per_month is not None
    )


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
    return as_utc(now, "now").replace(day=1, hour=0, minute=0, second=0, microsecond=0)


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
            ended_column() >= start,
        )
    ).one()
    run_gpu_s, run_money = _unbilled_so_far(
        session, project_id, start, as_utc(now, "now"), settings
    )
    gpu_hours = (float(gpu_s) + run_gpu_s) / 3600.0
    used_money = float(money) + run_money
    budget = session.scalars(select(Budget).where(Budget.project_id == project_id)).first()
    currency = f" {compute_settings(settings).currency}" if settings is not None else ""
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
