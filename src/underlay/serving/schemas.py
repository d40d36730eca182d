"""Request and response shapes of deployments, shared by the API, the SDK and the CLI."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from underlay.schemas import Line, Name

MODEL_REF = r"^[a-z][a-z0-9_-]{0,62}(@([1-9][0-9]{0,8}|[a-z][a-z0-9_-]{0,62}))?$"
ModelRef = Field(
    min_length=1,
    max_length=128,
    pattern=MODEL_REF,
    description="NAME@ALIAS, NAME@3 or NAME (latest).",
)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class LimitsSet(_In):
    """Per-token limits of one deployment (model-extraction defence)."""

    rate_per_s: float | None = Field(default=None, gt=0, le=1e6, description="Rows per second.")
    burst: int | None = Field(default=None, ge=1, le=10_000_000)
    daily_budget: int | None = Field(default=None, ge=1, le=10**12, description="Rows a day.")


class DeploymentCreate(_In):
    name: str = Name
    model: str = ModelRef
    replicas: int = Field(default=1, ge=1, le=64)
    cpus: float = Field(default=1.0, gt=0, le=256)
    memory_mib: int = Field(default=1024, ge=64, le=1024 * 1024)
    gpu_fraction: float | None = Field(default=None, gt=0, le=1)
    max_batch: int = Field(default=32, ge=1, le=4096)
    max_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    limits: LimitsSet = Field(default_factory=LimitsSet)
    log_sample_rate: float = Field(default=0.0, ge=0, le=1)
    input_ranges: Literal["ignore", "reject"] = Field(
        default="ignore", description="reject: refuse numbers outside the training range."
    )
    reason: Line = Field(default="", max_length=1000)


class DeploymentUpdate(_In):
    """A scale (``replicas``) and/or a rolling update to another version (``model``)."""

    replicas: int | None = Field(default=None, ge=1, le=64)
    model: str | None = Field(default=None, max_length=128, pattern=MODEL_REF)
    limits: LimitsSet | None = None
    log_sample_rate: float | None = Field(default=None, ge=0, le=1)
    reason: Line = Field(default="", max_length=1000)


class CanaryStart(_In):
    model: str = ModelRef
    weight: float = Field(default=0.1, gt=0, lt=1, description="Share of traffic to the canary.")
    replicas: int = Field(default=1, ge=1, le=64)
    window_s: float = Field(default=60.0, gt=0, le=7 * 86400)
    min_requests: int = Field(default=20, ge=1, le=10**9)
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    max_p99_ms: float = Field(default=500.0, gt=0, le=3_600_000)
    reason: Line = Field(default="", max_length=1000)


class ChangeReason(_In):
    reason: Line = Field(default="", max_length=1000)


class ReplicaReport(_In):
    """A replica's address, reported by the replica itself with its job token."""

    url: str = Field(pattern=r"^http://127\.0\.0\.1:[0-9]{1,5}$", max_length=64)


class ReplicaRead(_Out):
    id: int
    slot: int
    arm: str
    version: int
    state: str
    reason: str
    job_id: int | None
    job_state: str | None
    restarts: int


class TrafficRead(_Out):
    arm: Literal["stable", "canary"]
    version: int
    weight: float


class CanaryRead(_Out):
    version: int
    weight: float
    state: str
    started_at: dt.datetime | None
    policy: dict[str, Any]


class DeploymentRead(_Out):
    name: str
    project: str
    model: str
    version: int
    target_version: int
    state: str
    endpoint: str
    desired_replicas: int
    ready_replicas: int
    replicas: list[ReplicaRead]
    traffic: list[TrafficRead]
    canary: CanaryRead | None
    cpus: float
    memory_mib: int
    gpu_fraction: float | None
    max_batch: int
    max_wait_ms: float
    limits: LimitsSet
    log_sample_rate: float
    input_ranges: str = "ignore"
    created_at: dt.datetime
    updated_at: dt.datetime


class DeploymentEventRead(_Out):
    kind: str
    actor: str
    reason: str
    detail: dict[str, Any]
    at: dt.datetime


class PredictResponse(BaseModel):
    predictions: list[Any]
    model_version: int
    request_id: str


class FeedbackLabel(BaseModel):
    """A ground-truth label for one row of a request (any JSON value but null)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)
    label: Any
    row: int = Field(default=0, ge=0, le=1_000_000)


class FeedbackCreate(_In):
    labels: list[FeedbackLabel] = Field(min_length=1, max_length=10_000)


class FeedbackRead(_Out):
    """What a feedback call stored; ``unlogged``: labels for requests the prediction log
    did not hold (accepted, flagged: the log is sampled)."""

    table: str
    version: int
    accepted: int
    unlogged: int
