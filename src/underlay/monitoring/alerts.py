"""Raising alerts: one place for every alert of the platform (drift, performance, rules,
idle GPUs, budgets, model extraction, anomalies).

:func:`raise_alert` records an alert in compute's ``alerts`` table and, in the same
transaction, audits it and writes one row per matching webhook into the delivery outbox
(:mod:`underlay.monitoring.webhooks`), so an alert that is committed is delivered and one that
is rolled back never is. While an alert of the same kind and subject is open in a project a
new occurrence only counts (``count``, ``last_seen``): one condition, one alert, one
delivery. An alert raised while a silence covers it is recorded (and audited) but delivered
to no one.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from underlay.compute.ledger import as_utc, check_scope
from underlay.compute.models import Alert
from underlay.errors import InvalidInput
from underlay.monitoring.alert_models import AlertSilence
from underlay.store.models import Project
from underlay.store.types import utcnow

SEVERITIES = ("info", "warning", "error", "critical")
KIND_RE = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
MAX_SILENCE_S = 90 * 86400


def severity_rank(severity: str) -> int:
    """The place of ``severity`` in :data:`SEVERITIES` (``InvalidInput`` for another word)."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise InvalidInput(
            f"severity {severity[:40]!r} is not one of {', '.join(SEVERITIES)}"
        ) from None


def check_kind(kind: str) -> str:
    if not KIND_RE.fullmatch(kind):
        raise InvalidInput(
            f"an alert kind is 1-32 lower-case letters, digits, '_', '.' or '-' starting with "
            f"a letter, e.g. 'idle_gpu'; got {kind[:40]!r}"
        )
    return kind


def raise_alert(
    session: Session,
    *,
    project_id: int | None,
    kind: str,
    subject: str = "",
    message: str,
    severity: str = "warning",
    source: str = "",
    details: dict[str, Any] | None = None,
    job_id: int | None = None,
    now: dt.datetime | None = None,
) -> tuple[Alert, bool]:
    """Raise an alert, or count one more occurrence of the open alert of the same kind,
    subject and project (its message, details and ``last_seen`` updated, its severity the
    higher of the two). Returns the alert and whether it is new. A new alert is audited and
    queued for the project's matching webhooks unless a silence covers it. ``project_id``
    None is a cluster-wide alert (an unscoped session only; no webhook gets it)."""
    check_scope(session, project_id)
    check_kind(kind)
    severity_rank(severity)
    now = utcnow() if now is None else as_utc(now, "now")
    detail_text = json.dumps(details or {}, default=str, sort_keys=True)
    if len(detail_text) > 20_000:
        raise InvalidInput("alert details are limited to 20,000 characters of JSON")
    existing = open_alert(session, project_id, kind, subject)
    if existing is not None:
        existing.message = message[:1000]
        existing.count += 1
        existing.last_seen = now
        if severity_rank(severity) > severity_rank(existing.severity):
            existing.severity = severity
        if details is not None:
            existing.details = detail_text
        session.flush()
        return existing, False
    alert = Alert(
        kind=kind,
        subject=subject[:255],
        message=message[:1000],
        project_id=project_id,
        job_id=job_id,
        severity=severity,
        source=source[:32],
        details=detail_text,
        count=1,
        created_at=now,
        last_seen=now,
        silenced=project_id is not None and is_silenced(session, project_id, kind, subject, now),
    )
    session.add(alert)
    session.flush()
    _audit(session, alert)
    if project_id is not None and not alert.silenced:
        from underlay.monitoring.webhooks import enqueue_alert

        enqueue_alert(session, alert, now)
    return alert, True


def open_alert(session: Session, project_id: int | None, kind: str, subject: str) -> Alert | None:
    same_project = (
        Alert.project_id.is_(None) if project_id is None else Alert.project_id == project_id
    )
    stmt = select(Alert).where(
        Alert.kind == kind,
        Alert.subject == subject[:255],
        same_project,
        Alert.resolved_at.is_(None),
    )
    return session.scalars(stmt.order_by(Alert.id)).first()


def _audit(session: Session, alert: Alert) -> None:
    audit = session.info.get("audit")
    if audit is None:  # a bare Database (tests of the store); the platform always has one
        return
    project = None if alert.project_id is None else session.get(Project, alert.project_id)
    audit.append(
        session,
        actor="system",
        action="alert.raise",
        resource=f"alert:{alert.id}",
        project=None if project is None else project.name,
        outcome="ok",
        detail={
            "kind": alert.kind,
            "subject": alert.subject,
            "severity": alert.severity,
            "source": alert.source,
            "silenced": alert.silenced,
        },
    )


def alert_dict(alert: Alert, project: str | None) -> dict[str, Any]:
    """What a webhook receives about an alert (and what ``--json`` shows)."""
    return {
        "id": alert.id,
        "project": project,
        "kind": alert.kind,
        "subject": alert.subject,
        "message": alert.message,
        "severity": alert.severity,
        "source": alert.source,
        "details": json.loads(alert.details or "{}"),
        "count": alert.count,
        "created_at": alert.created_at.isoformat(),
        "last_seen": (alert.last_seen or alert.created_at).isoformat(),
    }


# -- silences -------------------------------------------------------------------------------


def is_silenced(
    session: Session, project_id: int, kind: str, subject: str, now: dt.datetime
) -> bool:
    stmt = select(AlertSilence.id).where(
        AlertSilence.project_id == project_id,
        AlertSilence.kind == kind,
        or_(AlertSilence.subject == "", AlertSilence.subject == subject[:255]),
        AlertSilence.until > now,
    )
    return session.scalars(stmt.limit(1)).first() is not None


def create_silence(
    session: Session,
    project_id: int,
    kind: str,
    *,
    subject: str = "",
    seconds: float,
    reason: str = "",
    created_by: int | None = None,
    now: dt.datetime | None = None,
) -> AlertSilence:
    """Silence alerts of ``kind`` (about ``subject``; any subject when empty) for
    ``seconds``: raised meanwhile they are recorded but not delivered."""
    check_scope(session, project_id)
    check_kind(kind)
    if not 0 < seconds <= MAX_SILENCE_S:
        raise InvalidInput(f"a silence lasts more than 0 s and at most 90 days, got {seconds} s")
    now = utcnow() if now is None else as_utc(now, "now")
    silence = AlertSilence(
        project_id=project_id,
        kind=kind,
        subject=subject[:255],
        until=now + dt.timedelta(seconds=seconds),
        reason=reason[:500],
        created_by=created_by,
        created_at=now,
    )
    session.add(silence)
    session.flush()
    return silence


def list_silences(
    session: Session, project_id: int, *, now: dt.datetime | None = None
) -> list[AlertSilence]:
    """The project's silences still in force, soonest to end first."""
    now = utcnow() if now is None else now
    stmt = select(AlertSilence).where(
        AlertSilence.project_id == project_id, AlertSilence.until > now
    )
    return list(session.scalars(stmt.order_by(AlertSilence.until, AlertSilence.id)))
