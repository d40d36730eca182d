"""Request and response shapes of the data resources, shared by the API and the SDK."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class TableVersionRead(_Out):
    version: int
    operation: str
    rows_written: int
    rows_quarantined: int
    num_rows: int
    source: str
    created_at: dt.datetime
    pii_report: dict[str, Any] = Field(
        description="PII found per column and the policy applied (privacy by default)."
    )

    @field_validator("pii_report", mode="before")
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
    version: int
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


class SqlQuery(_In):
    query: str = Field(min_length=1, max_length=100_000)
    format: Literal["arrow", "jsonl"] = "arrow"
