"""Alerts for owners and admins (an idle GPU held by a job, a budget nearly spent):
recorded once per open condition, resolved when it clears, visible within tenant scope.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from underlay.compute.ledger import as_utc, scope_of
from underlay.compute.models import Alert
from underlay.errors import InvalidInput, NotFound
from underlay.identity import SYSTEM, Action, Actor, authorize
from underlay.store.models import Project
from underlay.store.types import utcnow

# -- alerts ---------------------------------------------------------------------------------


def record_alert(
    session: Session,
    kind: str,
    message: str,
    project_id: int | None = None,
    job_id: int | None = None,
    subject: str = "",
    severity: str = "warning",
) -> tuple[Alert, bool]:
    """Raise an alert, unless one of the same kind, subject and project is still unresolved:
    then that one gets the new message and counts one more occurrence. Returns the alert and
    whether it is new. An alert without a project is cluster-wide and needs an unscoped
    session. Delegates to :func:`underlay.monitoring.alerts.raise_alert` (audit, silences,
    webhooks), with source ``compute``."""
    from underlay.monitoring.alerts import raise_alert

    if not kind:
        raise InvalidInput("an alert needs a kind, e.g. 'idle-gpu'")
    return raise_alert(
        session,
        project_id=project_id,
        kind=kind,
        subject=subject,
        message=message,
        severity=severity,
        source="compute",
        job_id=job_id,
    )


def _alerts_in_scope(session: Session) -> Select[Alert]:
    stmt = select(Alert)
    ids = scope_of(session).project_ids
    if ids is not None:
        stmt = stmt.where(Alert.project_id.in_(sorted(ids)))
    return stmt


def _filtered(session: Session, project_id: int | None, unresolved: bool) -> Select[Alert]:
    stmt = _alerts_in_scope(session)
    if project_id is not None:
        stmt = stmt.where(Alert.project_id == project_id)
    if unresolved:
        stmt = stmt.where(Alert.resolved_at.is_(None))
    return stmt


def list_alerts(
    session: Session,
    *,
    project_id: int | None = None,
    unresolved: bool = True,
    limit: int | None = None,
    offset: int = 0,
) -> list[Alert]:
    """Alerts the session may see (a scoped session sees its projects' only), newest first;
    ``limit`` and ``offset`` page through them."""
    stmt = _filtered(session, project_id, unresolved)
    stmt = stmt.order_by(Alert.created_at.desc(), Alert.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(stmt))


def count_alerts(
    session: Session, *, project_id: int | None = None, unresolved: bool = True
) -> int:
    """How many alerts :func:`list_alerts` pages through (counted in SQL)."""
    stmt = _filtered(session, project_id, unresolved).with_only_columns(func.count(Alert.id))
    return session.scalar(stmt) or 0


def read_alert(session: Session, alert_id: int) -> Alert:
    """The alert, if the session's scope shows it (a cluster-wide one to global admins only)."""
    alert = session.scalars(_alerts_in_scope(session).where(Alert.id == alert_id)).first()
    if alert is None:
        raise NotFound(f"alert {alert_id} does not exist")
    return alert


def resolve_alert_by_id(
    session: Session, alert_id: int, now: dt.datetime | None = None, *, actor: Actor = SYSTEM
) -> Alert:
    """Mark an alert resolved (again resolving one is harmless). Resolving changes what the
    project's owners see, so it needs a member of the alert's project (a global admin for a
    cluster-wide alert); a viewer gets ``PermissionDenied``."""
    alert = read_alert(session, alert_id)
    project = None if alert.project_id is None else session.get(Project, alert.project_id)
    authorize(actor, Action.write, project)
    if alert.resolved_at is None:
        alert.resolved_at = as_utc(now, "now") if now is not None else utcnow()
        session.flush()
    return alert


def resolve_alert(
    session: Session,
    kind: str,
    subject: str,
    now: dt.datetime | None = None,
    *,
    project_id: int | None = None,
) -> int:
    """Resolve the unresolved alerts of ``kind`` about ``subject`` (of one project when
    ``project_id`` is given): the condition cleared. Returns how many."""
    stmt = _alerts_in_scope(session).where(
        Alert.kind == kind, Alert.subject == subject, Alert.resolved_at.is_(None)
    )
    if project_id is not None:
        stmt = stmt.where(Alert.project_id == project_id)
    alerts = session.scalars(stmt).all()
    for alert in alerts:
        alert.resolved_at = as_utc(now, "now") if now is not None else utcnow()
    session.flush()
    return len(alerts)
