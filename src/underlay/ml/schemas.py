"""Request and response shapes of experiment tracking, shared by the API and the SDK.

A batch of metric points travels in columns (:class:`MetricColumns`): the distinct keys once,
then one array per field, so a batch of 10,000 points is five flat JSON arrays rather than
10,000 objects, and the server hands the columns to one bulk insert.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from underlay.schemas import Line, Name

MAX_INT = 2**31 - 1
MAX_STEP = 2**62
RunStatus = Literal["running", "finished", "failed", "killed"]
EndStatus = Literal["finished", "failed", "killed"]
BatchId = Field(pattern=r"^[0-9A-Za-z_-]{8,64}$")
MAX_BATCH_POINTS = 50_000


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ExperimentCreate(_In):
    name: str = Name
    description: Line = Field(default="", max_length=1000)


class ExperimentRead(_Out):
    id: int
    name: str
    description: str
    created_at: dt.datetime
    runs: int = Field(default=0, description="Runs the experiment holds.")


class RunInputRef(_In):
    """A dataset or table version the run read."""

    kind: Literal["dataset", "table"]
    name: str = Name
    version: int = Field(ge=0, le=MAX_INT)


class RunCreate(_In):
    experiment: str = Name
    name: Line = Field(default="", max_length=255)
    job_id: int | None = Field(default=None, ge=1, le=MAX_INT)
    git_commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{7,64}$")
    environment: str = Field(default="", max_length=1_000_000, pattern=r"^[^\x00]*$")
    params: dict[str, str] = Field(default_factory=dict, max_length=1000)
    tags: dict[str, str] = Field(default_factory=dict, max_length=1000)
    inputs: list[RunInputRef] = Field(default_factory=list, max_length=256)


class RunInputs(_In):
    inputs: list[RunInputRef] = Field(min_length=1, max_length=256)


class RunEnd(_In):
    status: EndStatus = "finished"
    error: str = Field(default="", max_length=2000, pattern=r"^[^\x00]*$")


class MetricPoint(BaseModel):
    step: int
    value: float
    timestamp: int


class RunRead(_Out):
    id: int
    experiment: str
    name: str
    status: RunStatus
    job_id: int | None
    git_commit: str | None
    error: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    params: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, MetricPoint] = Field(
        default_factory=dict, description="The latest point of each metric key."
    )
    inputs: list[RunInputRef] = Field(default_factory=list)


class RunEnvironment(BaseModel):
    run_id: int
    environment: str


class MetricColumns(_In):
    """Points in columns: point ``i`` is ``keys[key[i]]`` at ``step[i]`` with ``value[i]``,
    logged at ``timestamp[i]`` (milliseconds since the Unix epoch)."""

    keys: list[str] = Field(default_factory=list, max_length=10_000)
    key: list[int] = Field(default_factory=list, max_length=MAX_BATCH_POINTS)
    step: list[int] = Field(default_factory=list, max_length=MAX_BATCH_POINTS)
    value: list[float] = Field(default_factory=list, max_length=MAX_BATCH_POINTS)
    timestamp: list[int] = Field(default_factory=list, max_length=MAX_BATCH_POINTS)


class RunLog(_In):
    """One client batch. ``batch_id`` makes it idempotent: a batch sent again (its answer was
    lost) is recognised and written nothing the second time."""

    batch_id: str = BatchId
    params: dict[str, str] = Field(default_factory=dict, max_length=1000)
    tags: dict[str, str] = Field(default_factory=dict, max_length=1000)
    metrics: MetricColumns = Field(default_factory=MetricColumns)


class RunLogged(BaseModel):
    batch_id: str
    points: int
    duplicate: bool = Field(description="True when this batch id was written before.")


class MetricHistory(BaseModel):
    """The points of one key in step order, in columns."""

    run_id: int
    key: str
    total: int = Field(description="Points the key holds; more than returned when downsampled.")
    step: list[int]
    value: list[float]
    timestamp: list[int]


class ArtifactCreate(_In):
    path: str = Field(min_length=1, max_length=1024)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    media_type: str = Field(
        default="application/octet-stream", max_length=127, pattern=r"^[\w.+-]+/[\w.+-]+$"
    )


class ArtifactRead(_Out):
    run_id: int
    path: str
    digest: str
    size: int
    media_type: str
    created_at: dt.datetime


class RunSearch(_In):
    experiment: str | None = Field(default=None, min_length=1, max_length=63)
    filter: str = Field(default="", max_length=4000)
    order_by: str = Field(default="", max_length=1000)
    status: RunStatus | None = None
    limit: int = Field(default=1000, ge=1, le=10_000)


class RunComparison(BaseModel):
    """Runs side by side: each param and metric key that any of them has, one value per run
    (None where a run lacks it)."""

    runs: list[int]
    params: dict[str, list[str | None]]
    metrics: dict[str, list[float | None]]
