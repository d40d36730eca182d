"""Request and response shapes of ML pipeline runs and their steps (API and SDK)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from underlay.schemas import Name

MAX_INT = 2**31 - 1
StepKey = Field(pattern=r"^[a-z_][a-z0-9_]{0,39}(\.[0-9]{1,3})?$")
StepName = Field(pattern=r"^[a-z_][a-z0-9_]{0,39}$")
OutputName = r"^[a-z_][a-z0-9_]{0,31}$"
Hex64 = Field(pattern=r"^[0-9a-f]{64}$")
Error = Field(default="", max_length=2000, pattern=r"^[^\x00]*$")
MAX_JSON = 65536


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def _small_json(value: Any, what: str) -> Any:
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be JSON data without NaN or infinity") from None
    if len(text) > MAX_JSON:
        raise ValueError(f"{what} are longer than {MAX_JSON} bytes of JSON")
    return value


class RunCreate(_In):
    pipeline: str = Name
    mode: Literal["jobs", "local"] = "jobs"
    params: dict[str, Any] = Field(default_factory=dict, max_length=256)

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        return dict(_small_json(value, "params"))


class SweepRecord(_In):
    name: str = StepName
    step: str = StepName
    metric: str = Field(min_length=1, max_length=63, pattern=r"^[^\x00-\x1f\x7f]*$")
    mode: Literal["max", "min"]
    kind: Literal["grid", "random"]
    seed: int | None = None
    trials: list[str] = Field(max_length=256)
    best: str | None = None
    best_value: float | None = Field(default=None, allow_inf_nan=False)


class RunFinish(_In):
    status: Literal["succeeded", "failed"]
    error: str = Error
    duration_s: float = Field(default=0.0, ge=0, le=1e9, allow_inf_nan=False)
    sweeps: list[SweepRecord] = Field(default_factory=list, max_length=64)


class InputRef(_In):
    """An input of a call: another call's output in the same run."""

    step: str = StepKey
    output: str = Field(pattern=OutputName)


class StepCreate(_In):
    key: str = StepKey
    step: str = StepName
    sweep: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,39}$")
    code_digest: str = Hex64
    params: dict[str, Any] = Field(default_factory=dict, max_length=256)
    inputs: dict[str, InputRef] = Field(default_factory=dict, max_length=64)
    resources: dict[str, Any] = Field(default_factory=dict, max_length=16)
    cache: bool = True

    @field_validator("params", "resources")
    @classmethod
    def _json(cls, value: dict[str, Any]) -> dict[str, Any]:
        return dict(_small_json(value, "params"))


class StepStart(_In):
    job_id: int | None = Field(default=None, ge=1, le=MAX_INT)


class OutputWritten(_In):
    digest: str = Hex64
    format: Literal["parquet", "npy", "json", "pickle"]
    size: int = Field(ge=0, le=2**62)


class StepFinish(_In):
    status: Literal["succeeded", "failed"]
    outputs: dict[str, OutputWritten] = Field(default_factory=dict, max_length=64)
    metrics: dict[str, float] = Field(default_factory=dict, max_length=1024)
    error: str = Error
    attempts: int = Field(default=1, ge=0, le=100)
    duration_s: float = Field(default=0.0, ge=0, le=1e9, allow_inf_nan=False)

    @field_validator("outputs")
    @classmethod
    def _names(cls, value: dict[str, OutputWritten]) -> dict[str, OutputWritten]:
        import re

        for name in value:
            if not re.fullmatch(OutputName, name):
                raise ValueError(f"output name {name[:40]!r} is not a lowercase name")
        return value

    @field_validator("metrics")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        import math

        for name, number in value.items():
            if not math.isfinite(number) or len(name) > 63:
                raise ValueError(f"metric {name[:40]!r}: a finite number under a short name")
        return value


class OutputRead(BaseModel):
    digest: str
    format: str
    size: int
    signature: str | None = None


class InputRead(BaseModel):
    step: str
    output: str
    digest: str
    format: str
    size: int
    signature: str | None = None


class StepRead(_Out):
    id: int
    run_id: int
    key: str
    step: str
    sweep: str | None
    status: str
    code_digest: str
    cache_key: str
    params: dict[str, Any]
    inputs: dict[str, InputRead]
    outputs: dict[str, OutputRead]
    metrics: dict[str, float]
    resources: dict[str, Any]
    job_id: int | None
    attempts: int
    cached_from: int | None
    cached_from_run: int | None = None
    error: str
    duration_s: float | None
    started_at: dt.datetime
    finished_at: dt.datetime | None


class RunRead(_Out):
    id: int
    pipeline: str
    mode: str
    status: str
    params: dict[str, Any]
    sweeps: list[dict[str, Any]]
    error: str
    duration_s: float | None
    created_by: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    steps: list[StepRead] = []
    signing_key: str = Field(
        default="", description="The platform's Ed25519 public key (hex) that signs pickles."
    )
