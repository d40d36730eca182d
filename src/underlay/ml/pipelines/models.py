"""Tables of ML pipelines: each run of a pipeline, and each call of a step in it.

A step row is the unit of caching: ``cache_key`` (the hash of the step's code, its inputs'
digests and its parameters) is indexed per project, so "has this exact step run before" is
one lookup. ``inputs``, ``params``, ``outputs`` and ``metrics`` are JSON text."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from underlay.store.models import MONOTONIC, Base, ProjectScoped
from underlay.store.types import utcnow


class MLPipelineRun(ProjectScoped, Base):
    """One run of an ML pipeline: ``running`` to ``succeeded`` or ``failed``, once.
    ``sweeps`` is JSON ``[{"name", "metric", "mode", "kind", "seed", "trials", "best"}]``."""

    __tablename__ = "ml_pipeline_runs"
    __table_args__ = (
        Index("ix_ml_pipeline_runs_project_pipeline", "project_id", "pipeline"),
        MONOTONIC,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(63))
    mode: Mapped[str] = mapped_column(String(8), default="jobs")
    status: Mapped[str] = mapped_column(String(16), default="running")
    params: Mapped[str] = mapped_column(Text, default="{}")
    sweeps: Mapped[str] = mapped_column(Text, default="[]")
    error: Mapped[str] = mapped_column(String(2000), default="")
    duration_s: Mapped[float | None] = mapped_column(Float)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column()


class MLPipelineStep(ProjectScoped, Base):
    """One call of a step in a run (a sweep's trial is one too, keyed ``NAME.N``).

    ``status``: ``pending`` -> ``running`` -> ``succeeded`` | ``failed``; ``cached`` when an
    earlier call with the same ``cache_key`` gave its outputs (``cached_from`` names it);
    ``skipped`` when an input failed."""

    __tablename__ = "ml_pipeline_steps"
    __table_args__ = (
        UniqueConstraint("run_id", "key"),
        Index("ix_ml_pipeline_steps_project_cache_key", "project_id", "cache_key"),
        MONOTONIC,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("ml_pipeline_runs.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(String(48))
    step: Mapped[str] = mapped_column(String(40))
    sweep: Mapped[str | None] = mapped_column(String(40))
    code_digest: Mapped[str] = mapped_column(String(64))
    cache_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    params: Mapped[str] = mapped_column(Text, default="{}")
    inputs: Mapped[str] = mapped_column(Text, default="{}")
    outputs: Mapped[str] = mapped_column(Text, default="{}")
    metrics: Mapped[str] = mapped_column(Text, default="{}")
    resources: Mapped[str] = mapped_column(Text, default="{}")
    job_id: Mapped[int | None] = mapped_column(Integer)  # not a foreign key: jobs are compute's
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cached_from: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(String(2000), default="")
    duration_s: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column()
