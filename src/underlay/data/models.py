"""Tables of the data domain: datasets of files, their immutable versions, and manifests.

A version's files are rows that name a blob of the same project by digest (a composite foreign
key onto ``blobs``), so a file is stored once however many versions and datasets hold it, and
a blob that a version holds cannot be deleted from under it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from underlay.store.models import MONOTONIC, Base, ProjectScoped
from underlay.store.types import utcnow


class Dataset(ProjectScoped, Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "name"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(String(1000), default="")
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DatasetVersion(ProjectScoped, Base):
    """One immutable version: its number counts up from 1 within its dataset."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(String(1000), default="")
    file_count: Mapped[int] = mapped_column(Integer)
    total_size: Mapped[int] = mapped_column(BigInteger)
    manifest_digest: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DatasetFile(ProjectScoped, Base):
    """A file of a version: its path in the dataset and the blob that holds its bytes."""

    __tablename__ = "dataset_files"
    __table_args__ = (
        ForeignKeyConstraint(["project_id", "digest"], ["blobs.project_id", "blobs.digest"]),
        Index("ix_dataset_files_project_digest", "project_id", "digest"),
    )

    version_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(127), default="application/octet-stream")


class DataTable(ProjectScoped, Base):
    """A Delta Lake table of a project. Its files live under the tables root at
    ``<project id>/<table id>`` (ids are never reused, so a new table never meets an old
    one's files). ``published_version`` is the Delta version readers see: a write is published
    only once it is complete, so a write that crashed leaves readers on the version before."""

    __tablename__ = "data_tables"
    __table_args__ = (UniqueConstraint("project_id", "name"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(String(1000), default="")
    published_version: Mapped[int | None] = mapped_column(Integer)
    # JSON: the quality checks every new version must pass (underlay.data.quality)
    checks: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the data-subject key column: each version records which subjects it wrote
    subject_key: Mapped[str | None] = mapped_column(String(63))
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DataTableVersion(ProjectScoped, Base):
    """What one write did: its operation and row counts, and whether it was published or
    rejected by a blocking quality check (then readers never see it)."""

    __tablename__ = "data_table_versions"
    __table_args__ = (UniqueConstraint("table_id", "version"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    table_id: Mapped[int] = mapped_column(
        ForeignKey("data_tables.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    operation: Mapped[str] = mapped_column(String(16))  # append | overwrite | merge | restore
    rows_written: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_quarantined: Mapped[int] = mapped_column(BigInteger, default=0)
    num_rows: Mapped[int] = mapped_column(BigInteger, default=0)  # rows in the table after it
    source: Mapped[str] = mapped_column(String(255), default="")
    pii_report: Mapped[str] = mapped_column(Text, default="{}")  # JSON: findings and policies
    status: Mapped[str] = mapped_column(String(16), default="published")  # | rejected
    quality_report: Mapped[str] = mapped_column(Text, default="{}")  # JSON: what the checks found
    # JSON {source, column, type, value} of an incremental load from a database, else null
    watermark: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PipelineRun(ProjectScoped, Base):
    """One run of an ETL pipeline, as its runner (the SDK, on the caller's side or in a job)
    reported it: which table versions it read, which version it wrote, and its figures.

    ``status`` is ``running`` until the runner finishes it as ``succeeded`` or ``failed``
    (see :mod:`underlay.data.pipeline_runs`); ``inputs`` is JSON ``[{"table", "version"}]``,
    ``steps`` JSON ``[{"name", "kind", "rows_out", "rows_rejected"}]``."""

    __tablename__ = "pipeline_runs"
    __table_args__ = (
        Index("ix_pipeline_runs_project_pipeline", "project_id", "pipeline"),
        MONOTONIC,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(63))
    spec_digest: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="running")
    inputs: Mapped[str] = mapped_column(Text, default="[]")
    output_table: Mapped[str] = mapped_column(String(63))
    output_version: Mapped[int | None] = mapped_column(Integer)
    rows_in: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_out: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_quarantined: Mapped[int] = mapped_column(BigInteger, default=0)
    steps: Mapped[str] = mapped_column(Text, default="[]")
    error: Mapped[str] = mapped_column(String(2000), default="")
    duration_s: Mapped[float | None] = mapped_column(Float)
    job_id: Mapped[int | None] = mapped_column(Integer)  # not a foreign key: jobs are compute's
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column()


class DataTableSubject(ProjectScoped, Base):
    """A data subject that a table version wrote: the key column's value as stored (a token
    when the column is tokenised). Indexed on (project, subject), so every version of every
    table that holds a subject is one query."""

    __tablename__ = "data_table_subjects"
    __table_args__ = (Index("ix_data_table_subjects_project_subject", "project_id", "subject"),)

    table_id: Mapped[int] = mapped_column(
        ForeignKey("data_tables.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
