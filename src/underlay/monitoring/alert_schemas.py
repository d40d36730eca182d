"""Request and response bodies of alert rules, silences and webhooks."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, field_validator

from underlay.schemas import Line

Severity = Field(default="warning", max_length=16, description="info, warning, error or critical.")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class RuleCreate(_In):
    name: str = Field(max_length=63, description="The rule's name in its project.")
    source: str = Field(
        max_length=32, description="drift, performance, latency, errors, cost or security."
    )
    metric: str = Field(max_length=63, description="The figure of the source, e.g. p99_ms.")
    comparison: str = Field(max_length=2, description="One of > >= < <= == !=.")
    threshold: float = Field(description="The figure is compared with this.")
    severity: str = Severity
    subject: Line = Field(default="", max_length=255, description="One subject only (empty: all).")
    cooldown_s: float = Field(
        default=0.0, ge=0, le=30 * 86400, description="Quiet time after firing."
    )

    @field_validator("threshold", mode="before")
    @classmethod
    def _number(cls, value: object) -> object:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class RuleRead(_Out):
    id: int
    name: str
    source: str
    metric: str
    comparison: str
    threshold: float
    severity: str
    subject: str
    cooldown_s: float
    created_at: dt.datetime


class SilenceCreate(_In):
    kind: str = Field(max_length=32, description="The alert kind to silence.")
    subject: Line = Field(default="", max_length=255, description="One subject only (empty: all).")
    seconds: float = Field(gt=0, le=90 * 86400, description="How long the silence lasts.")
    reason: Line = Field(default="", max_length=500)


class SilenceRead(_Out):
    id: int
    kind: str
    subject: str
    until: dt.datetime
    reason: str
    created_at: dt.datetime


class WebhookCreate(_In):
    name: str = Field(max_length=63, description="The webhook's name in its project.")
    url: str = Field(max_length=2048, description="http:// or https:// URL to post alerts to.")
    secret: str | None = Field(
        default=None, min_length=16, max_length=512, description="HMAC-SHA256 key (kept sealed)."
    )
    min_severity: str = Severity
    kinds: list[str] = Field(default_factory=list, max_length=64, description="Only these kinds.")


class WebhookRead(BaseModel):
    id: int
    name: str
    url: str
    signed: bool
    min_severity: str
    kinds: list[str]
    enabled: bool
    created_at: dt.datetime
    deliveries: dict[str, int] = Field(default_factory=dict)


class DeliveryRead(_Out):
    id: int
    webhook_id: int
    alert_id: int | None
    event: str
    state: str
    attempts: int
    next_attempt_at: dt.datetime
    last_error: str
    created_at: dt.datetime
    delivered_at: dt.datetime | None
