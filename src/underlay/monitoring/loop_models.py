"""Tables of the retraining loop: one policy per deployment, and the loop's runs.

A run is a persisted state machine (:mod:`underlay.monitoring.loop_steps`); ``steps`` is
its history as JSON ``[{"state", "at", "detail"}]`` and the other JSON columns hold what each
step found (``trigger``, ``evaluation``, ``canary``), so a run can be read, resumed or
abandoned from its row alone."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from underlay.store.models import MONOTONIC, Base, ProjectScoped
from underlay.store.types import utcnow


class RetrainPolicy(ProjectScoped, Base):
    """When and how a deployment is retrained (see docs/monitoring.md)."""

    __tablename__ = "retrain_policies"
    __table_args__ = (UniqueConstraint("project_id", "deployment"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment: Mapped[str] = mapped_column(String(63))
    pipeline: Mapped[str] = mapped_column(String(63))
    pipeline_file: Mapped[str] = mapped_column(String(255))
    workdir_digest: Mapped[str] = mapped_column(String(64))
    table: Mapped[str] = mapped_column(String(63))
    artifact: Mapped[str] = mapped_column(String(255), default="model")
    task: Mapped[str] = mapped_column(String(16), default="classification")
    drift_share: Mapped[float] = mapped_column(Float, default=0.2)
    metric_floor: Mapped[float | None] = mapped_column(Float, nullable=True)
    margin: Mapped[float] = mapped_column(Float, default=0.01)
    holdout_share: Mapped[float] = mapped_column(Float, default=0.5)
    min_rows: Mapped[int] = mapped_column(Integer, default=30)
    canary_weight: Mapped[float] = mapped_column(Float, default=0.2)
    canary_window_s: Mapped[float] = mapped_column(Float, default=60.0)
    canary_min_requests: Mapped[int] = mapped_column(Integer, default=20)
    mode: Mapped[str] = mapped_column(String(16), default="auto")
    cooldown_s: Mapped[float] = mapped_column(Float, default=3600.0)
    cpus: Mapped[float] = mapped_column(Float, default=1.0)
    memory_mib: Mapped[int] = mapped_column(Integer, default=2048)
    env: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the training job's variables
    owner_id: Mapped[int | None] = mapped_column(  # the training job runs as this user
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    updated_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RetrainRun(ProjectScoped, Base):
    """One turn of the loop for a deployment, from its trigger to a terminal state."""

    __tablename__ = "retrain_runs"
    __table_args__ = (
        Index("ix_retrain_runs_project_deployment", "project_id", "deployment"),
        Index("ix_retrain_runs_state", "state"),
        MONOTONIC,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment: Mapped[str] = mapped_column(String(63))
    mode: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(24), default="triggered")
    policy: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the policy when triggered
    trigger: Mapped[str] = mapped_column(Text, default="{}")  # JSON: why it started
    table_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    champion_version: Mapped[int] = mapped_column(Integer)
    challenger_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    training_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tracking_run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    evaluation: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    canary: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    steps: Mapped[str] = mapped_column(Text, default="[]")  # JSON: the history
    reason: Mapped[str] = mapped_column(String(2000), default="")
    created_by: Mapped[str] = mapped_column(String(128), default="")
    approved_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    policy_id: Mapped[int | None] = mapped_column(
        ForeignKey("retrain_policies.id", ondelete="SET NULL"), nullable=True
    )
