"""Request and response shapes of the data resources, shared by the API and the SDK."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from underlay.data.quality import Check, CheckSpec
from underlay.schemas import Line, Name

Digest = Field(pattern=r"^[0-9a-f]{64}$")


class _In(BaseModel):
    """A request body: unknown fields refused, strict types (as in :mod:`underlay.schemas`)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class DatasetCreate(_In):
    name: str = Name
    description: Line = Field(default="", max_length=1000)


class DatasetRead(_Out):
    name: str
    description: str
    created_at: dt.datetime
    latest_version: int | None = None
    file_count: int | None = Field(default=None, description="Files in the latest version.")
    total_size: int | None = Field(default=None, description="Bytes in the latest version.")


class DigestList(_In):
    digests: list[str] = Field(max_length=100_000)


class MissingDigests(BaseModel):
    missing: list[str] = Field(description="Digests the project holds no blob for: upload them.")


class FileEntryModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, from_attributes=True)
    path: str = Field(min_length=1, max_length=1024)
    digest: str = Digest
    size: int = Field(ge=0)
    media_type: str = Field(
        default="application/octet-stream", max_length=127, pattern=r"^[\w.+-]+/[\w.+-]+$"
    )


class VersionCreate(_In):
    files: list[FileEntryModel] = Field(max_length=1_000_000)
    message: Line = Field(default="", max_length=1000)


class VersionRead(_Out):
    dataset: str
    version: int
    message: str
    file_count: int
    total_size: int
    manifest_digest: str
    created_at: dt.datetime
    created: bool = Field(
        default=True, description="False when the push changed nothing (the latest version)."
    )


class FilePage(BaseModel):
    files: list[FileEntryModel]
    next_after: str | None = Field(
        default=None, description="Pass as `after` for the next page; null on the last one."
    )


class FileChange(BaseModel):
    path: str
    before: FileEntryModel
    after: FileEntryModel


class DiffRead(BaseModel):
    dataset: str
    from_version: int
    to_version: int
    added: list[FileEntryModel]
    removed: list[FileEntryModel]
    changed: list[FileChange]


# -- tables ----------------------------------------------------------------------------------


class ColumnRead(BaseModel):
    name: str
    type: str


class TableRead(_Out):
    name: str
    description: str
    version: int | None = Field(description="The published version (null before any data).")
    created_at: dt.datetime
    columns: list[ColumnRead] | None = None
    subject_key: str | None = Field(
        default=None, description="The data-subject key column, if the table declares one."
    )


class TableUpdate(_In):
    subject_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="The data-subject key column (null to drop it); every version is "
        "indexed by it.",
    )


class TableVersionRead(_Out):
    version: int
    status: str = Field(
        default="published",
        description="published, or rejected: a blocking quality check failed and readers "
        "never saw it.",
    )
    operation: str
    rows_written: int
    rows_quarantined: int
    num_rows: int
    source: str
    created_at: dt.datetime
    pii_report: dict[str, Any] = Field(
        description="PII found per column and the policy applied (privacy by default)."
    )
    quality_report: dict[str, Any] = Field(
        default_factory=dict,
        description="What the table's quality checks found on this version (empty: none).",
    )
    watermark: dict[str, Any] | None = Field(
        default=None,
        description="Where an incremental load got to: its source (no credentials), "
        "column, type and highest value.",
    )

    @field_validator("pii_report", "quality_report", "watermark", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


class PieceRead(BaseModel):
    file: int = Field(description="The file's place among the version's Parquet files.")
    row_group: int
    rows: int


class TablePiecesRead(BaseModel):
    """What a loader shards and shuffles: the row groups of a version's files."""

    table: str
    version: int
    rows: int
    files: int
    pieces: list[PieceRead]


class WriteRead(BaseModel):
    table: str
    version: int | None = Field(
        description="The version written (the latest one when nothing was; null when the "
        "table has none)."
    )
    operation: str
    rows_written: int
    rows_quarantined: int
    num_rows: int = Field(description="Rows in the table after the write.")
    quarantine_table: str | None = Field(
        default=None, description="Where the rows that could not be read went, with reasons."
    )
    quarantine_version: int | None = None
    pii: dict[str, Any] | None = Field(
        default=None,
        description="PII found per column and the policy applied: columns with PII and no "
        "policy given are tokenised.",
    )
    published: bool = Field(
        default=True,
        description="False when a blocking quality check failed: the version is recorded as "
        "rejected and readers stay on the previous one.",
    )
    files: int | None = Field(
        default=None, description="How many files of a folder were written (a folder write)."
    )
    quality: dict[str, Any] | None = Field(
        default=None,
        description="What the table's quality checks found (null when it has none): passed, "
        "failed and warnings (check names), and per check its reason, failing_rows and a "
        "sample of the failing rows.",
    )
    watermark: dict[str, Any] | None = Field(
        default=None, description="Where an incremental load got to (kept with the version)."
    )
    created: bool = Field(
        default=True, description="False when an incremental load found no new rows."
    )


class ChecksRead(BaseModel):
    table: str
    checks: list[Check] = Field(description="The checks every new version must pass.")


class QualityRead(BaseModel):
    table: str
    version: int
    report: dict[str, Any] = Field(description="As a write's `quality`.")


class ChecksWrite(CheckSpec):
    """The checks to declare (they replace the table's)."""


class CheckRun(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checks: list[Check] | None = Field(
        default=None, max_length=100, description="Checks to try instead of the table's own."
    )


class SqlQuery(_In):
    query: str = Field(min_length=1, max_length=100_000)
    format: Literal["arrow", "jsonl"] = "arrow"


# -- pipeline runs ------------------------------------------------------------------------------

RunStatus = Literal["running", "succeeded", "failed"]
MAX_INT = 2**31 - 1
MAX_BIG = 2**63 - 1


class TableVersionRef(BaseModel):
    """A table at one version: a pipeline's input."""

    model_config = ConfigDict(extra="forbid", strict=True)

    table: str = Name
    version: int = Field(ge=0, le=MAX_INT)


class StepReport(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Name
    kind: Literal["sql", "python"]
    rows_out: int = Field(ge=0, le=MAX_BIG)
    rows_rejected: int = Field(default=0, ge=0, le=MAX_BIG)


class PipelineRunCreate(_In):
    """What a runner reports when a run starts: the inputs pinned, the output it will write."""

    pipeline: str = Name
    spec_digest: str = Digest
    inputs: list[TableVersionRef] = Field(min_length=1, max_length=64)
    output_table: str = Name
    job_id: int | None = Field(default=None, ge=1, le=MAX_INT)


class PipelineRunFinish(_In):
    """What a runner reports when a run ends."""

    status: Literal["succeeded", "failed"]
    output_version: int | None = Field(default=None, ge=0, le=MAX_INT)
    rows_in: int = Field(default=0, ge=0, le=MAX_BIG)
    rows_out: int = Field(default=0, ge=0, le=MAX_BIG)
    rows_rejected: int = Field(default=0, ge=0, le=MAX_BIG)
    rows_quarantined: int = Field(default=0, ge=0, le=MAX_BIG)
    steps: list[StepReport] = Field(default_factory=list, max_length=256)
    error: str = Field(default="", max_length=2000, pattern=r"^[^\x00]*$")
    duration_s: float = Field(default=0.0, ge=0, le=1e9, allow_inf_nan=False)


class PipelineRunRead(_Out):
    id: int
    pipeline: str
    spec_digest: str
    status: RunStatus
    inputs: list[TableVersionRef]
    output_table: str
    output_version: int | None
    rows_in: int
    rows_out: int
    rows_rejected: int
    rows_quarantined: int
    steps: list[StepReport]
    error: str
    duration_s: float | None = Field(
        description="How long the run took; while it runs, how long it had run at its runner's "
        "last lease renewal."
    )
    job_id: int | None
    created_by: str | None = Field(default=None, description="Who started the run.")
    started_at: dt.datetime
    finished_at: dt.datetime | None
    lease_s: float | None = Field(
        default=None,
        description="While the run is running: its runner renews the lease (POST "
        "…/pipeline-runs/{id}/lease) within this many seconds, or the run is recorded as failed.",
    )

    @field_validator("inputs", "steps", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


class SubjectQuery(_In):
    value: str = Field(
        min_length=1, max_length=1000, description="The subject's key value, raw (not a token)."
    )


class SubjectVersionRead(BaseModel):
    version: int
    operation: str
    rows: list[dict[str, Any]] = Field(description="The subject's rows in this version.")
    truncated: bool = Field(description="True when there were more rows than returned.")


class SubjectTableRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    table: str
    column: str
    stored_as: Literal["raw", "token"]
    published_version: int | None
    in_published: bool = Field(description="Whether the published version holds the subject.")
    versions: list[SubjectVersionRead] = Field(description="The versions that wrote it.")


class SubjectRead(BaseModel):
    tables: list[SubjectTableRead]


class PartsStarted(BaseModel):
    """A write in parts, started: its parts go to ``…/parts/{write}/{index}``."""

    table: str
    write: str = Field(description="The write's id: name it in each part and in the commit.")


class PartRead(BaseModel):
    index: int
    rows: int
    bytes: int


class PartsCommit(BaseModel):
    parts: list[int] = Field(
        min_length=1,
        max_length=100_000,
        description="The parts that make the version, in order: each must have been staged.",
    )
