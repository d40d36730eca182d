"""Tables of experiment tracking: experiments, runs, and what a run logs.

* A **run** belongs to an experiment of a project; its ``status`` walks the state machine of
  :mod:`underlay.ml.runs` (``running`` to ``finished``, ``failed`` or ``killed``, once).
* **Metrics** are points ``(run, key, step, value, timestamp)``, stored in **chunks**: the
  points of one key that one batch wrote are one row, their steps, values and timestamps
  packed as arrays. A batch of 10,000 points of a key is one row to insert (not 10,000 rows,
  each with its index entry and foreign-key check), and a history of 100,000 points is a
  range scan of a few rows and a concatenation of their arrays. Within a run and key the
  steps strictly increase (checked against the latest point before a chunk is written), so
  chunks never overlap and ``(run_id, key, first_step)`` orders them.
* **Latest metrics** hold the last point of each key of a run: what searches filter and sort
  on, and what the server checks a new batch's steps against.
* **Batches** record each client batch id in the transaction that wrote its points, so a batch
  sent again after a lost answer is recognised and written nothing (exactly once).
* **Artifacts** are files of a run: a path and a blob of the same project (a composite
  foreign key onto ``blobs``, as dataset files have).
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
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from underlay.store.models import MONOTONIC, Base, ProjectScoped
from underlay.store.types import utcnow


class Experiment(ProjectScoped, Base):
    __tablename__ = "experiments"
    __table_args__ = (UniqueConstraint("project_id", "name"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(String(1000), default="")
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Run(ProjectScoped, Base):
    """One training run. ``environment`` is the ``pip freeze`` of the process that ran it;
    ``job_id`` the job it ran in (not a foreign key: jobs are compute's and outlive nothing)."""

    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_project_experiment", "project_id", "experiment_id"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(16), default="running")
    job_id: Mapped[int | None] = mapped_column(Integer)
    git_commit: Mapped[str | None] = mapped_column(String(64))
    environment: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(String(2000), default="")
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column()


class RunParam(ProjectScoped, Base):
    __tablename__ = "run_params"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(String(6000))


class RunTag(ProjectScoped, Base):
    __tablename__ = "run_tags"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(String(6000))


class MetricChunk(ProjectScoped, Base):
    """Points of one key of a run, written by one batch, packed in columns: ``step_bytes`` and
    ``timestamp_bytes`` (milliseconds since the Unix epoch, as the client saw them) are
    little-endian int64, ``value_bytes`` little-endian float64, ``points`` long each. Steps
    strictly increase within a key, so the chunks of a key do not overlap and ``first_step``
    orders them: a history is one range scan of the primary key."""

    __tablename__ = "metric_chunks"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    first_step: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    last_step: Mapped[int] = mapped_column(BigInteger)
    points: Mapped[int] = mapped_column(Integer)
    step_bytes: Mapped[bytes] = mapped_column(LargeBinary)
    value_bytes: Mapped[bytes] = mapped_column(LargeBinary)
    timestamp_bytes: Mapped[bytes] = mapped_column(LargeBinary)


class LatestMetric(ProjectScoped, Base):
    """The last point of each key of a run, for searches and for checking new steps."""

    __tablename__ = "latest_metrics"
    __table_args__ = (Index("ix_latest_metrics_project_key_value", "project_id", "key", "value"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float] = mapped_column(Float)
    timestamp: Mapped[int] = mapped_column(BigInteger)


class RunBatch(ProjectScoped, Base):
    """A client batch that was written: its id, recorded in the same transaction."""

    __tablename__ = "run_batches"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    points: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RunInput(ProjectScoped, Base):
    """A dataset or table version a run read (``kind`` is ``dataset`` or ``table``)."""

    __tablename__ = "run_inputs"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)


class RunArtifact(ProjectScoped, Base):
    """A file of a run: its path under the run and the blob that holds its bytes."""

    __tablename__ = "run_artifacts"
    __table_args__ = (
        ForeignKeyConstraint(["project_id", "digest"], ["blobs.project_id", "blobs.digest"]),
        Index("ix_run_artifacts_project_digest", "project_id", "digest"),
    )

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(127), default="application/octet-stream")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
