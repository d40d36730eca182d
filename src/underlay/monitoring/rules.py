"""Alert rules: "raise an alert of this severity when this figure crosses this threshold".

A rule belongs to a project and watches one ``source``; whoever measures something calls
:func:`evaluate_rules` with the figures it measured about one subject (a deployment, a
budget, the project's sign-ins), and every rule of that source whose metric is among them and
whose comparison holds raises an alert of kind ``source`` about that subject (de-duplicated
while open, like every alert). ``cooldown_s`` keeps a rule quiet about a subject for that
long after it last fired.

Sources and the figures they report (the metric a rule names):

- ``drift``: ``drifted_features``, ``share_drifted``, ``max_score`` (per deployment, after
  each drift check);
- ``performance``: the metric names of a performance report (``accuracy``, ``f1``,
  ``rmse``...), per deployment;
- ``latency``: ``p50_ms``, ``p95_ms``, ``p99_ms`` per deployment (serving's counters);
- ``errors``: ``error_rate``, ``errors`` per deployment;
- ``cost``: ``budget_fraction``, ``gpu_hours``, ``money`` (the compute ledger's month so
  far), subject ``budget``;
- ``security``: ``auth_failures`` (refused requests of the project, subject ``auth``),
  ``extraction_events`` and ``rate_limited`` per deployment (serving's guard).
"""

from __future__ import annotations

import datetime as dt
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from underlay.compute.ledger import check_scope
from underlay.compute.models import Alert
from underlay.errors import Conflict, InvalidInput, NotFound
from underlay.monitoring.alert_models import AlertRule
from underlay.monitoring.alerts import raise_alert, severity_rank
from underlay.store.types import utcnow

SOURCES = ("drift", "performance", "latency", "errors", "cost", "security")
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
METRIC_RE = re.compile(r"[a-z][a-z0-9_.]{0,62}")


@dataclass(frozen=True)
class RuleSpec:
    name: str
    source: str
    metric: str
    comparison: str
    threshold: float
    severity: str = "warning"
    subject: str = ""
    cooldown_s: float = 0.0


def _check(spec: RuleSpec) -> None:
    if not NAME_RE.fullmatch(spec.name):
        raise InvalidInput(
            f"a rule name is 1-63 lower-case letters, digits, '_' or '-', got {spec.name[:40]!r}"
        )
    if spec.source not in SOURCES:
        raise InvalidInput(f"source {spec.source[:40]!r} is not one of {', '.join(SOURCES)}")
    if not METRIC_RE.fullmatch(spec.metric):
        raise InvalidInput(f"metric {spec.metric[:40]!r} is not a metric name like 'p95_ms'")
    if spec.comparison not in COMPARISONS:
        raise InvalidInput(
            f"comparison {spec.comparison[:8]!r} is not one of {' '.join(COMPARISONS)}"
        )
    if not math.isfinite(spec.threshold):
        raise InvalidInput("a rule's threshold must be a finite number")
    severity_rank(spec.severity)
    if not 0 <= spec.cooldown_s <= 30 * 86400:
        raise InvalidInput("a rule's cooldown is 0 to 30 days")


def create_rule(
    session: Session, project_id: int, spec: RuleSpec, *, created_by: int | None = None
) -> AlertRule:
    """Add a rule to a project (``Conflict`` if the name is taken)."""
    check_scope(session, project_id)
    _check(spec)
    taken = session.scalars(
        select(AlertRule.id).where(AlertRule.project_id == project_id, AlertRule.name == spec.name)
    ).first()
    if taken is not None:
        raise Conflict(f"rule {spec.name!r} exists; remove it first to replace it")
    rule = AlertRule(
        project_id=project_id,
        name=spec.name,
        source=spec.source,
        metric=spec.metric,
        comparison=spec.comparison,
        threshold=spec.threshold,
        severity=spec.severity,
        subject=spec.subject[:255],
        cooldown_s=spec.cooldown_s,
        created_by=created_by,
    )
    session.add(rule)
    session.flush()
    return rule


def list_rules(session: Session, project_id: int, *, source: str | None = None) -> list[AlertRule]:
    stmt = select(AlertRule).where(AlertRule.project_id == project_id)
    if source is not None:
        stmt = stmt.where(AlertRule.source == source)
    return list(session.scalars(stmt.order_by(AlertRule.name)))


def delete_rule(session: Session, project_id: int, name: str) -> AlertRule:
    if not NAME_RE.fullmatch(name):
        raise NotFound(f"rule {name[:63]!r} does not exist")
    rule = session.scalars(
        select(AlertRule).where(AlertRule.project_id == project_id, AlertRule.name == name[:63])
    ).first()
    if rule is None:
        raise NotFound(f"rule {name[:63]!r} does not exist")
    session.delete(rule)
    session.flush()
    return rule


def has_rules(session: Session, project_id: int, source: str) -> bool:
    stmt = select(AlertRule.id).where(
        AlertRule.project_id == project_id, AlertRule.source == source
    )
    return session.scalars(stmt.limit(1)).first() is not None


def evaluate_rules(
    session: Session,
    *,
    project_id: int,
    source: str,
    subject: str,
    values: Mapping[str, float],
    now: dt.datetime | None = None,
) -> list[Alert]:
    """Check ``values`` (metric -> figure about ``subject``) against the project's rules of
    ``source``; returns the alerts raised or counted again (one per firing rule)."""
    check_scope(session, project_id)
    now = now or utcnow()
    stmt = select(AlertRule).where(
        AlertRule.project_id == project_id,
        AlertRule.source == source,
        or_(AlertRule.subject == "", AlertRule.subject == subject[:255]),
    )
    fired: list[Alert] = []
    for rule in session.scalars(stmt.order_by(AlertRule.name)):
        value = values.get(rule.metric)
        if value is None or not math.isfinite(value):
            continue
        if not COMPARISONS[rule.comparison](float(value), rule.threshold):
            continue
        if _cooling(session, rule, subject, now):
            continue
        alert, _ = raise_alert(
            session,
            project_id=project_id,
            kind=source,
            subject=subject,
            message=(
                f"{rule.metric} of {subject or source} is {value:g} "
                f"({rule.comparison} {rule.threshold:g}, rule {rule.name!r})"
            ),
            severity=rule.severity,
            source=source,
            details={
                "rule": rule.name,
                "metric": rule.metric,
                "value": float(value),
                "comparison": rule.comparison,
                "threshold": rule.threshold,
                "values": {k: float(v) for k, v in values.items()},
            },
            now=now,
        )
        fired.append(alert)
    return fired


def _cooling(session: Session, rule: AlertRule, subject: str, now: dt.datetime) -> bool:
    if rule.cooldown_s <= 0:
        return False
    since = now - dt.timedelta(seconds=rule.cooldown_s)
    last = session.scalars(
        select(Alert.id).where(
            Alert.project_id == rule.project_id,
            Alert.kind == rule.source,
            Alert.subject == subject[:255],
            Alert.last_seen >= since,
        )
    ).first()
    return last is not None
