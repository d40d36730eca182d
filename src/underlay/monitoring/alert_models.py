"""Tables of alerting: rules, silences, webhooks and the delivery outbox.

The alerts themselves stay in compute's ``alerts`` table (:class:`underlay.compute.models.Alert`,
widened by migration 0021 with severity, source, details, a repeat count and ``last_seen``), so
every alert of the platform is in one place.

``alert_deliveries`` is an outbox: a row is written in the transaction that raises the alert,
and the delivery worker posts it afterwards, retrying with backoff (attempts,
``next_attempt_at`` and ``last_error`` are in the row, so a restart loses nothing).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from underlay.store.models import MONOTONIC, Base, ProjectScoped
from underlay.store.types import utcnow


class AlertRule(ProjectScoped, Base):
    """Raise an alert of ``severity`` when ``metric`` of ``source`` compares true to
    ``threshold``; not again for the same subject within ``cooldown_s``."""

    __tablename__ = "alert_rules"
    __table_args__ = (UniqueConstraint("project_id", "name"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    source: Mapped[str] = mapped_column(String(32), index=True)
    metric: Mapped[str] = mapped_column(String(63))
    comparison: Mapped[str] = mapped_column(String(2))
    threshold: Mapped[float] = mapped_column(Float)
    severity: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(255), default="")  # "": every subject
    cooldown_s: Mapped[float] = mapped_column(Float, default=0.0)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AlertSilence(ProjectScoped, Base):
    """Alerts of ``kind`` (about ``subject``, or any when empty) raised before ``until`` are
    recorded but not delivered."""

    __tablename__ = "alert_silences"
    __table_args__ = MONOTONIC

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(255), default="")
    until: Mapped[dt.datetime] = mapped_column()
    reason: Mapped[str] = mapped_column(String(500), default="")
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Webhook(ProjectScoped, Base):
    """Where a project's alerts are posted; the HMAC secret is sealed under the project's
    data key."""

    __tablename__ = "webhooks"
    __table_args__ = (UniqueConstraint("project_id", "name"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    url: Mapped[str] = mapped_column(String(2048))
    secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    min_severity: Mapped[str] = mapped_column(String(16), default="warning")
    kinds: Mapped[str] = mapped_column(Text, default="[]")  # JSON list; empty: every kind
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AlertDelivery(ProjectScoped, Base):
    """One post of one alert to one webhook: pending until the receiver answers 2xx."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (Index("ix_alert_deliveries_due", "state", "next_attempt_at"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), index=True
    )
    alert_id: Mapped[int | None] = mapped_column(
        ForeignKey("alerts.id", ondelete="CASCADE"), nullable=True, index=True
    )
    event: Mapped[str] = mapped_column(String(16))  # alert | test
    payload: Mapped[str] = mapped_column(Text)  # JSON, fixed when enqueued
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column()
