"""Tables of the serving domain: deployments, their replicas, and the history of changes.

A deployment pins one model version (``version``; ``canary_version`` while a canary runs).
Each replica row is one slot served by one long-running service job at a time: when the job
ends (crash, node lost) the serving runtime submits a new job for the same slot. The row
keeps the replica's secret sealed under the project's data key (the server sends it on every
call, so no other local process can call the replica directly) and the URL the replica
reported with its own job token. ``generation`` counts changes, so every server process can
tell with one cheap query whether its cached view of a deployment is stale.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
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


class Deployment(ProjectScoped, Base):
    """A named endpoint of a project serving one model version (and maybe a canary)."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("project_id", "name"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    model: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    target_version: Mapped[int] = mapped_column(Integer)  # != version: a rolling update runs
    canary_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    canary_weight: Mapped[float] = mapped_column(Float, default=0.0)
    canary_policy: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    canary_state: Mapped[str] = mapped_column(String(16), default="none")
    canary_started_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    replicas: Mapped[int] = mapped_column(Integer)
    cpus: Mapped[float] = mapped_column(Float, default=1.0)
    memory_mib: Mapped[int] = mapped_column(Integer, default=1024)
    gpu_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_batch: Mapped[int] = mapped_column(Integer, default=32)
    max_wait_ms: Mapped[float] = mapped_column(Float, default=5.0)
    settings: Mapped[str] = mapped_column(Text, default="{}")  # JSON: limits, log sampling
    generation: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DeploymentReplica(ProjectScoped, Base):
    """One slot of a deployment and the job serving it now."""

    __tablename__ = "deployment_replicas"
    __table_args__ = (
        Index("ix_deployment_replicas_deployment_slot", "deployment_id", "slot"),
        MONOTONIC,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    slot: Mapped[int] = mapped_column(Integer)
    arm: Mapped[str] = mapped_column(String(16))  # stable | canary
    version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    url: Mapped[str | None] = mapped_column(String(255), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="starting")
    reason: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    stop_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)  # draining until


class DeploymentEvent(ProjectScoped, Base):
    """One change of a deployment: what, by whom, when and why (append-only)."""

    __tablename__ = "deployment_events"
    __table_args__ = (Index("ix_deployment_events_deployment_at", "deployment_id", "at"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(1000), default="")
    detail: Mapped[str] = mapped_column(Text, default="{}")
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ServingBudgetUsage(Base):
    """Rows served per (token, deployment, UTC day), leased by each server process (the daily
    budget of :mod:`underlay.serving.limits`, shared by every worker)."""

    __tablename__ = "serving_budget_usage"

    token_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    deployment_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    day: Mapped[int] = mapped_column(Integer, primary_key=True)
    used: Mapped[int] = mapped_column(BigInteger)
