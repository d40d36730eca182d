"""Request and response shapes of the retraining loop (policies and runs)."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from underlay.schemas import Line

Mode = Literal["auto", "approval", "dry-run"]
Task = Literal["classification", "regression"]
NAME = r"^[a-z][a-z0-9_-]{0,62}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PolicySet(_In):
    """A deployment's retrain policy (the whole policy: a set replaces the earlier one)."""

    pipeline: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", description="@pipeline name.")
    pipeline_file: str = Field(
        min_length=1,
        max_length=255,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./-]*\.py$",
        description="The pipeline's file, relative to the uploaded folder.",
    )
    workdir_digest: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="The uploaded folder (a tar.gz blob)."
    )
    table: str | None = Field(
        default=None,
        pattern=NAME,
        description="The training table (its newest version); default: the deployment's "
        "reference table, found through lineage.",
    )
    artifact: str = Field(default="model", min_length=1, max_length=255)
    task: Task = "classification"
    drift_share: float = Field(default=0.2, gt=0, le=1, description="Share of drifted features.")
    metric_floor: float | None = Field(
        default=None, ge=-1e12, le=1e12, description="Retrain below this accuracy (or -RMSE)."
    )
    margin: float = Field(default=0.01, ge=0, le=1e6, description="How much better to win.")
    holdout_share: float = Field(default=0.5, gt=0, le=1)
    min_rows: int = Field(default=30, ge=1, le=10_000_000)
    canary_weight: float = Field(default=0.2, gt=0, lt=1)
    canary_window_s: float = Field(default=60.0, gt=0, le=7 * 86400)
    canary_min_requests: int = Field(default=20, ge=1, le=10**9)
    mode: Mode = "auto"
    cooldown_s: float = Field(default=3600.0, ge=0, le=30 * 86400)
    cpus: float = Field(default=1.0, gt=0, le=1024, description="The training job's CPUs.")
    memory_mib: int = Field(default=2048, ge=64, le=16 * 1024 * 1024)
    env: dict[str, str] = Field(
        default_factory=dict, max_length=64, description="The training job's variables."
    )

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name) or len(text) > 4096:
                raise ValueError(f"env: {name[:40]!r} is not a variable name or its value is long")
            if name.startswith("UNDERLAY_"):
                raise ValueError(f"env: {name} is the platform's to set, not a policy's")
        return value


class PolicyRead(PolicySet):
    model_config = ConfigDict(from_attributes=True, extra="ignore", strict=False)

    @field_validator("env", mode="before")
    @classmethod
    def _stored(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    deployment: str
    updated_by: str
    updated_at: dt.datetime


class RunStart(_In):
    """Start a run now (by hand); ``drift``: a drift summary that stands for the trigger."""

    reason: Line = Field(default="", max_length=1000)
    drift: dict[str, Any] | None = None


class RunRead(BaseModel):
    id: int
    deployment: str
    mode: str
    state: str
    terminal: bool
    trigger: dict[str, Any]
    table_version: str | None
    champion_version: int
    challenger_version: int | None
    training_job_id: int | None
    tracking_run_id: int | None
    evaluation: dict[str, Any]
    canary: dict[str, Any]
    steps: list[dict[str, Any]]
    reason: str
    created_by: str
    approved_by: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None
