"""Request and response shapes of the compute resources, shared by the API and the SDK."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from underlay.schemas import Line, Text

PriorityClass = Literal["low", "normal", "high"]
PRIORITIES: dict[str, int] = {"low": -10, "normal": 0, "high": 10}
EnvName = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
MAX_REPORTED_S = 10 * 366 * 86400.0  # ten years: longer than any attempt runs


class _In(BaseModel):
    """A request body: unknown fields refused, strict types (as in :mod:`underlay.schemas`)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class JobCreate(_In):
    command: list[str] = Field(min_length=1, max_length=1024, description="argv to run.")
    name: Line = Field(default="", max_length=128)
    env: dict[str, str] = Field(default_factory=dict, max_length=256)
    secrets: dict[str, str] = Field(
        default_factory=dict, max_length=64, description="Encrypted at rest, never logged."
    )
    workdir_digest: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="A tar.gz blob of the project."
    )
    cpus: float = Field(default=1.0, gt=0, le=1024, description="CPUs per worker.")
    memory_mib: int = Field(default=512, ge=16, le=16 * 1024 * 1024)
    gpus: int = Field(default=0, ge=0, le=64, description="Whole accelerators per worker.")
    gpu_fraction: float | None = Field(
        default=None, gt=0, le=1, description="A share of one accelerator, instead of gpus."
    )
    gpu_type: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    gang: int = Field(default=1, ge=1, le=1024, description="Workers that start together.")
    priority: PriorityClass = "normal"
    deferrable: bool = Field(default=False, description="May wait for a low-carbon window.")
    max_runtime_s: float | None = Field(default=None, gt=0, le=30 * 86400)
    max_retries: int = Field(default=0, ge=0, le=10)
    preemptible: bool = Field(
        default=True, description="False: never stopped to make room for other work."
    )
    app: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Application name that max_per_node counts workers under.",
    )
    max_per_node: int | None = Field(
        default=None, ge=1, le=1024, description="At most this many workers of the app per node."
    )
    node_selector: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="key=value labels every node it runs on must carry.",
    )

    @field_validator("node_selector")
    @classmethod
    def _selector(cls, value: list[str]) -> list[str]:
        from underlay.compute.scheduler.constraints import parse_labels

        for item in value:
            if len(item) > 256:
                raise ValueError("a node selector label is longer than 256 characters")
        return list(parse_labels(value))

    @field_validator("command")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("the command's first word must not be empty")
        if sum(len(a) for a in value) > 65536 or any("\x00" in a for a in value):
            raise ValueError("the command is longer than 64 KiB or contains NUL")
        return value

    @field_validator("env", "secrets")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for key, item in value.items():
            if not re.fullmatch(EnvName, key) or key.startswith("UNDERLAY_"):
                raise ValueError(f"{key[:40]!r} is not an allowed variable name")
            if len(item) > 32768 or "\x00" in item:
                raise ValueError(f"value of {key} is longer than 32 KiB or contains NUL")
        return value


class JobRead(_Out):
    id: int
    project: str
    name: str
    user: str | None
    command: list[str]
    state: str
    reason: str
    cpus: float
    memory_mib: int
    gpus: int
    gpu_fraction: float | None
    gpu_type: str | None
    gang: int
    priority: str
    deferrable: bool
    preemptible: bool = True
    app: str | None = None
    max_per_node: int | None = None
    node_selector: list[str] = []
    max_runtime_s: float | None
    max_retries: int
    attempts: int
    exit_code: int | None
    borrowed: bool
    node: str | None
    submitted_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    warnings: list[str] = []


class AcceleratorRead(_Out):
    index: int
    uuid: str
    vendor: str
    type: str
    memory_mib: int
    memory_used_mib: int
    utilization: float
    power_watts: float | None
    temperature_c: float | None
    ecc_errors: int
    healthy: bool
    health_reason: str
    simulated: bool


class NodeRead(_Out):
    name: str
    hostname: str
    cpu_milli: int
    memory_mib: int
    cpu_utilization: float
    status: str
    status_reason: str
    simulated: bool
    isolation: str = Field(
        default="none", description="How jobs are sandboxed on this node (docs/security.md)."
    )
    labels: list[str] = Field(
        default=[], description="key=value labels its agent reports (compute.node_labels)."
    )
    heartbeat_at: dt.datetime
    accelerators: list[AcceleratorRead] = []

    @field_validator("labels", mode="before")
    @classmethod
    def _stored(cls, value: object) -> object:
        import json

        return json.loads(value) if isinstance(value, str) else value


class CordonRequest(_In):
    reason: Line = Field(default="cordoned by an operator", max_length=500)


class QuotaSet(_In):
    guaranteed: int = Field(ge=0, le=100000)
    borrow_limit: int | None = Field(default=None, ge=0, le=100000)


class QuotaRead(_Out):
    accelerator_type: str
    guaranteed: int
    borrow_limit: int | None


class BudgetSet(_In):
    gpu_hours_per_month: float | None = Field(default=None, ge=0, le=1e9)
    money_per_month: float | None = Field(default=None, ge=0, le=1e12)
    warn_fraction: float = Field(default=0.8, gt=0, le=1)


class AttemptStarted(_In):
    pid: int = Field(ge=1, le=2**31 - 1)
    pid_started: float = Field(ge=0)


class AttemptEnded(_In):
    state: Literal["succeeded", "failed", "cancelled", "preempted", "lost"]
    exit_code: int | None = Field(default=None, ge=-255, le=255)
    reason: Text = Field(default="", max_length=1000)
    wall_s: float = Field(default=0.0, ge=0, le=MAX_REPORTED_S, allow_inf_nan=False)
    cpu_s: float = Field(default=0.0, ge=0, le=1024 * MAX_REPORTED_S, allow_inf_nan=False)
    energy_kwh: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)
    energy_estimated: bool = True


class WorkerInfo(BaseModel):
    """Where one worker of a gang runs (the scheduler's placement)."""

    node: str
    gpu_indexes: list[int] = []
    gpu_uuids: list[str] = []


class LaunchInfo(BaseModel):
    """What the node agent needs to start one attempt (sent to agents only)."""

    attempt_id: int
    job_id: int
    attempt: int
    project: str
    project_id: int = 0
    command: list[str]
    env: dict[str, str]
    secrets: dict[str, str]
    workdir_digest: str | None
    cpu_milli: int
    memory_mib: int
    gpu_indexes: list[int]
    gpu_uuids: list[str]
    gpu_fraction: float | None
    max_runtime_s: float | None
    workers: list[WorkerInfo] = []  # a gang's workers in rank order (one: just this node)


class AttemptRef(BaseModel):
    attempt_id: int
    job_id: int
    attempt: int
    pid: int | None
    pid_started: float | None
    stop: Literal["cancel", "preempt"] | None = None
    stop_reason: str = ""
    grace_s: float = 0.0
    log_offset: int = 0  # bytes of its output the server holds already


class AgentWork(BaseModel):
    """The server's answer to a heartbeat: what this node should start, watch and stop."""

    node_status: str
    launch: list[LaunchInfo] = []
    running: list[AttemptRef] = []


class UsageRead(BaseModel):
    key: str | None = None
    attempts: int
    jobs: int
    wall_hours: float
    cpu_hours: float
    gpu_hours: float
    energy_kwh: float
    energy_estimated: bool
    cost: float
    currency: str
    carbon_kg: float


class AlertRead(_Out):
    id: int
    kind: str
    project_id: int | None
    job_id: int | None
    subject: str
    message: str
    created_at: dt.datetime
    resolved_at: dt.datetime | None
    severity: str = "warning"
    source: str = ""
    details: dict[str, Any] = Field(default_factory=dict)
    count: int = 1
    last_seen: dt.datetime | None = None
    silenced: bool = False

    @field_validator("details", mode="before")
    @classmethod
    def _parse_details(cls, value: Any) -> Any:
        return json.loads(value or "{}") if isinstance(value, str) else value
