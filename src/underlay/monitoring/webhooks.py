"""Webhooks: where a project's alerts are posted, and the outbox that gets them there.

A webhook has a URL (http or https only), an optional HMAC secret (sealed under the
project's data key, never shown again), a least severity and an optional list of alert kinds.
:func:`enqueue_alert` writes one ``alert_deliveries`` row per matching webhook inside the
transaction that raised the alert; :func:`deliver_due` (run by the server's alert worker)
posts the rows that are due. A post that fails (no answer, a timeout, a non-2xx status) is
tried again after ``retry_base_s``, then twice as long each time up to ``retry_max_s``, until
``max_attempts``; attempts, the next attempt's time and the last error live in the row, so a
server restart loses nothing and a receiver that comes back gets every alert.

A delivery is claimed before it is posted (its ``next_attempt_at`` moved past the post's
timeout, by a compare-and-set), so several server processes never post the same row at once.
A process that dies between the receiver's answer and recording it posts that row again:
delivery is at least once, and ``X-Underlay-Delivery`` lets a receiver drop a repeat.

Signature: with a secret, ``X-Underlay-Signature: sha256=<hex>`` is the HMAC-SHA256 of
``<X-Underlay-Timestamp>.<body>`` under the secret (see :func:`signature`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from underlay.compute.models import Alert
from underlay.config import AlertSettings
from underlay.crypto import Keyring, seal, unseal
from underlay.errors import Conflict, InvalidInput, NotFound
from underlay.monitoring import egress
from underlay.monitoring.alert_models import AlertDelivery, Webhook
from underlay.monitoring.alerts import alert_dict, check_kind, severity_rank
from underlay.store import Database, Scope
from underlay.store.models import Project
from underlay.store.types import utcnow

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
BATCH = 20
_PORTS = {"http": 80, "https": 443}


def _aad(project_id: int) -> bytes:
    return f"underlay webhook secret v1 project {project_id}".encode()


def check_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL; ``InvalidInput`` saying why not otherwise."""
    if len(url) > 2048:
        raise InvalidInput("a webhook URL is at most 2048 characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise InvalidInput("a webhook URL may not hold control characters")
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise InvalidInput(f"webhook URL {url[:80]!r} is malformed: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"a webhook URL must start with http:// or https://, got {url[:80]!r}")
    if not parts.hostname:
        raise InvalidInput(f"webhook URL {url[:80]!r} has no host")
    return url


@dataclass(frozen=True)
class WebhookSpec:
    name: str
    url: str
    secret: str | None = None
    min_severity: str = "warning"
    kinds: tuple[str, ...] = ()


def create_webhook(
    session: Session,
    keyring: Keyring,
    project_id: int,
    spec: WebhookSpec,
    *,
    created_by: int | None = None,
    denied: Sequence[egress.Network] = (),
) -> Webhook:
    """Add a webhook to a project; its secret is sealed under the project's data key. A URL
    whose host is in one of the ``denied`` networks is refused (see :mod:`.egress`)."""
    if not NAME_RE.fullmatch(spec.name):
        raise InvalidInput(
            f"a webhook name is 1-63 lower-case letters, digits, '_' or '-', got {spec.name[:40]!r}"
        )
    check_url(spec.url)
    parts = urlsplit(spec.url)
    egress.check_host(parts.hostname or "", parts.port or _PORTS[parts.scheme], denied)
    severity_rank(spec.min_severity)
    kinds = sorted({check_kind(k) for k in spec.kinds})
    if spec.secret is not None and not 16 <= len(spec.secret) <= 512:
        raise InvalidInput("a webhook secret is 16 to 512 characters")
    taken = session.scalars(
        select(Webhook.id).where(Webhook.project_id == project_id, Webhook.name == spec.name)
    ).first()
    if taken is not None:
        raise Conflict(f"webhook {spec.name!r} exists; remove it first to replace it")
    hook = Webhook(
        project_id=project_id,
        name=spec.name,
        url=spec.url,
        min_severity=spec.min_severity,
        kinds=json.dumps(kinds),
        created_by=created_by,
    )
    if spec.secret is not None:
        key = keyring.data_key(session, project_id)
        hook.secret_sealed = seal(key, spec.secret.encode(), _aad(project_id))
    session.add(hook)
    session.flush()
    return hook


def list_webhooks(session: Session, project_id: int) -> list[Webhook]:
    stmt = select(Webhook).where(Webhook.project_id == project_id).order_by(Webhook.name)
    return list(session.scalars(stmt))


def read_webhook(session: Session, project_id: int, name: str) -> Webhook:
    if not NAME_RE.fullmatch(name):
        raise NotFound(f"webhook {name[:63]!r} does not exist")
    hook = session.scalars(
        select(Webhook).where(Webhook.project_id == project_id, Webhook.name == name[:63])
    ).first()
    if hook is None:
        raise NotFound(f"webhook {name[:63]!r} does not exist")
    return hook


def delete_webhook(session: Session, project_id: int, name: str) -> None:
    """Remove a webhook and its undelivered deliveries."""
    hook = read_webhook(session, project_id, name)
    for row in session.scalars(select(AlertDelivery).where(AlertDelivery.webhook_id == hook.id)):
        session.delete(row)
    session.delete(hook)
    session.flush()


def webhook_kinds(hook: Webhook) -> list[str]:
    kinds: list[str] = json.loads(hook.kinds or "[]")
    return kinds


def delivery_counts(session: Session, webhook_id: int) -> dict[str, int]:
    from sqlalchemy import func

    stmt = (
        select(AlertDelivery.state, func.count())
        .where(AlertDelivery.webhook_id == webhook_id)
        .group_by(AlertDelivery.state)
    )
    return {state: n for state, n in session.execute(stmt)}


# -- the outbox -----------------------------------------------------------------------------


def _matches(hook: Webhook, alert: Alert) -> bool:
    kinds = webhook_kinds(hook)
    if kinds and alert.kind not in kinds:
        return False
    return severity_rank(alert.severity) >= severity_rank(hook.min_severity)


def enqueue_alert(session: Session, alert: Alert, now: dt.datetime) -> int:
    """One pending delivery per enabled webhook of the alert's project that wants it."""
    if alert.project_id is None:
        return 0
    project = session.get(Project, alert.project_id)
    payload = json.dumps(
        {"event": "alert", "alert": alert_dict(alert, project.name if project else None)}
    )
    queued = 0
    for hook in list_webhooks(session, alert.project_id):
        if hook.enabled and _matches(hook, alert):
            session.add(
                AlertDelivery(
                    project_id=alert.project_id,
                    webhook_id=hook.id,
                    alert_id=alert.id,
                    event="alert",
                    payload=payload,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            queued += 1
    session.flush()
    return queued


def enqueue_test(session: Session, hook: Webhook, now: dt.datetime | None = None) -> AlertDelivery:
    """A test post to ``hook`` through the same outbox (retried like any delivery)."""
    now = now or utcnow()
    project = session.get(Project, hook.project_id)
    payload = {
        "event": "test",
        "project": project.name if project else None,
        "webhook": hook.name,
        "message": "a test delivery from underlay",
    }
    row = AlertDelivery(
        project_id=hook.project_id,
        webhook_id=hook.id,
        event="test",
        payload=json.dumps(payload),
        next_attempt_at=now,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def list_deliveries(
    session: Session, project_id: int, *, webhook_id: int | None = None
) -> list[AlertDelivery]:
    stmt = select(AlertDelivery).where(AlertDelivery.project_id == project_id)
    if webhook_id is not None:
        stmt = stmt.where(AlertDelivery.webhook_id == webhook_id)
    return list(session.scalars(stmt.order_by(AlertDelivery.id)))


# -- delivering -----------------------------------------------------------------------------


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Underlay-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of
    ``timestamp + "." + body`` under ``secret``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass(frozen=True)
class _Claimed:
    id: int
    url: str
    secret: bytes | None
    payload: str
    event: str
    attempts: int


def backoff_s(attempts: int, settings: AlertSettings) -> float:
    """The wait after the ``attempts``-th failed attempt: base, doubled each time, capped."""
    return float(min(settings.retry_max_s, settings.retry_base_s * 2 ** (attempts - 1)))


def deliver_due(
    db: Database,
    keyring: Keyring,
    settings: AlertSettings,
    *,
    http: httpx.Client | None = None,
) -> dict[str, int]:
    """Post every delivery that is due (in batches); returns how many were ``delivered``,
    ``retry`` (failed, to be tried again) and ``failed`` (given up)."""
    tally = {"delivered": 0, "retry": 0, "failed": 0}
    # made only when there is something to post: its TLS context (the CA bundle) costs tens
    # of milliseconds, which an idle worker would pay every second
    client = http
    try:
        while True:
            claimed = _claim(db, keyring, settings)
            for row in claimed:
                if client is None:
                    networks = egress.parse_networks(settings.webhook_denied_networks)
                    client = egress.guarded_client(networks, settings.delivery_timeout_s)
                error = _post(client, row)
                tally[_record(db, settings, row, error)] += 1
            if len(claimed) < BATCH:
                return tally
    finally:
        if http is None and client is not None:
            client.close()


def _claim(db: Database, keyring: Keyring, settings: AlertSettings) -> list[_Claimed]:
    now = utcnow()
    lease = now + dt.timedelta(seconds=settings.delivery_timeout_s + 30)
    out: list[_Claimed] = []
    with db.session(Scope.everything()) as session:
        due = session.execute(
            select(AlertDelivery, Webhook)
            .join(Webhook, Webhook.id == AlertDelivery.webhook_id)
            .where(AlertDelivery.state == "pending", AlertDelivery.next_attempt_at <= now)
            .order_by(AlertDelivery.next_attempt_at, AlertDelivery.id)
            .limit(BATCH)
        ).all()
        for row, hook in due:
            taken = session.execute(
                update(AlertDelivery)
                .where(
                    AlertDelivery.id == row.id,
                    AlertDelivery.state == "pending",
                    AlertDelivery.next_attempt_at == row.next_attempt_at,
                )
                .values(next_attempt_at=lease)
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                continue  # another process took it
            secret = None
            if hook.secret_sealed is not None:
                key = keyring.data_key(session, hook.project_id, create=False)
                what = f"secret of webhook {hook.name!r}"
                secret = unseal(key, hook.secret_sealed, _aad(hook.project_id), what)
            out.append(_Claimed(row.id, hook.url, secret, row.payload, row.event, row.attempts))
    return out


def _post(client: httpx.Client, row: _Claimed) -> str | None:
    body = row.payload.encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "underlay-webhooks",
        "X-Underlay-Event": row.event,
        "X-Underlay-Delivery": str(row.id),
        "X-Underlay-Timestamp": timestamp,
    }
    if row.secret is not None:
        headers["X-Underlay-Signature"] = signature(row.secret, timestamp, body)
    try:
        response = client.post(row.url, content=body, headers=headers)
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"[:500] or type(error).__name__
    if response.is_success:
        return None
    return f"HTTP {response.status_code} from the receiver"


def _record(db: Database, settings: AlertSettings, row: _Claimed, error: str | None) -> str:
    now = utcnow()
    attempts = row.attempts + 1
    with db.session(Scope.everything()) as session:
        found = session.get(AlertDelivery, row.id)
        if found is None:  # its webhook was removed meanwhile
            return "failed"
        found.attempts = attempts
        if error is None:
            found.state, found.delivered_at, found.last_error = "delivered", now, ""
            return "delivered"
        found.last_error = error[:500]
        if attempts >= settings.max_attempts:
            found.state = "failed"
            log.warning(
                "webhook delivery %s given up after %s attempts: %s", row.id, attempts, error
            )
            return "failed"
        found.next_attempt_at = now + dt.timedelta(seconds=backoff_s(attempts, settings))
        return "retry"


def delivery_totals(session: Session, project_ids: list[int] | None) -> dict[str, int]:
    """Deliveries by state (for ``/metrics``), of some projects or (None) all."""
    from sqlalchemy import func

    stmt = select(AlertDelivery.state, func.count()).group_by(AlertDelivery.state)
    if project_ids is not None:
        stmt = stmt.where(AlertDelivery.project_id.in_(project_ids))
    return {state: n for state, n in session.execute(stmt)}


def describe(hook: Webhook) -> dict[str, Any]:
    return {
        "id": hook.id,
        "name": hook.name,
        "url": hook.url,
        "signed": hook.secret_sealed is not None,
        "min_severity": hook.min_severity,
        "kinds": webhook_kinds(hook),
        "enabled": hook.enabled,
        "created_at": hook.created_at,
    }
