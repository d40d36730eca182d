"""Tables of the compute domain: nodes, accelerators, jobs, attempts, quotas, budgets, alerts.

Units follow the scheduler's snapshot: CPUs in thousandths, memory in MiB, accelerator
shares in thousandths of one device. Usage is kept per attempt, so a retried job is billed
once per attempt and never twice for one.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from underlay.store.models import MONOTONIC, Base, ProjectScoped
from underlay.store.types import utcnow


class NodeRow(Base):
    __tablename__ = "nodes"
    __table_args__ = MONOTONIC

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    cpu_milli: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(BigInteger)
    cpu_utilization: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(16), default="ready")  # ready|lost|cordoned
    status_reason: Mapped[str] = mapped_column(String(500), default="")
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    isolation: Mapped[str] = mapped_column(String(32), default="none")
    labels: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of "key=value"
    info: Mapped[str] = mapped_column(Text, default="{}")
    registered_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AcceleratorRow(Base):
    __tablename__ = "accelerators"
    __table_args__ = (UniqueConstraint("node_id", "index"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    uuid: Mapped[str] = mapped_column(String(128), default="")
    vendor: Mapped[str] = mapped_column(String(32), default="")
    type: Mapped[str] = mapped_column(String(64))
    memory_mib: Mapped[int] = mapped_column(BigInteger)
    memory_used_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    utilization: Mapped[float] = mapped_column(Float, default=0.0)
    power_watts: Mapped[float | None] = mapped_column(Float)
    idle_watts: Mapped[float | None] = mapped_column(Float)
    busy_watts: Mapped[float | None] = mapped_column(Float)
    temperature_c: Mapped[float | None] = mapped_column(Float)
    ecc_errors: Mapped[int] = mapped_column(Integer, default=0)
    mig: Mapped[bool] = mapped_column(Boolean, default=False)
    healthy: Mapped[bool] = mapped_column(Boolean, default=True)
    health_reason: Mapped[str] = mapped_column(String(500), default="")
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    idle_since: Mapped[dt.datetime | None] = mapped_column()  # held by a job yet near 0%


class Job(ProjectScoped, Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state", "state"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    command: Mapped[str] = mapped_column(Text)  # JSON list of argv strings
    workdir_digest: Mapped[str | None] = mapped_column(String(64))
    env: Mapped[str] = mapped_column(Text, default="{}")  # JSON object
    secrets_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    cpu_milli: Mapped[int] = mapped_column(Integer, default=1000)
    memory_mib: Mapped[int] = mapped_column(BigInteger, default=512)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    gpu_milli: Mapped[int] = mapped_column(Integer, default=0)
    gpu_type: Mapped[str | None] = mapped_column(String(64))
    gang: Mapped[int] = mapped_column(Integer, default=1)
    priority_class: Mapped[str] = mapped_column(String(32), default="normal")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    deferrable: Mapped[bool] = mapped_column(Boolean, default=False)
    preemptible: Mapped[bool] = mapped_column(Boolean, default=True)
    app: Mapped[str | None] = mapped_column(String(128))
    max_per_node: Mapped[int | None] = mapped_column(Integer)
    node_selector: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of "key=value"
    max_runtime_s: Mapped[float | None] = mapped_column(Float)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    reason: Mapped[str] = mapped_column(String(1000), default="")
    exit_code: Mapped[int | None] = mapped_column(Integer)
    attained_service: Mapped[float] = mapped_column(Float, default=0.0)
    placement: Mapped[str | None] = mapped_column(Text)  # JSON of the current attempt
    borrowed: Mapped[bool] = mapped_column(Boolean, default=False)
    stop_requested: Mapped[str | None] = mapped_column(String(16))  # cancel|preempt
    stop_deadline: Mapped[dt.datetime | None] = mapped_column()
    submitted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    admitted_at: Mapped[dt.datetime | None] = mapped_column()
    started_at: Mapped[dt.datetime | None] = mapped_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column()


class JobAttempt(Base):
    """One run of a job on its placement, with the usage it is billed for."""

    __tablename__ = "job_attempts"
    __table_args__ = (UniqueConstraint("job_id", "number"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int] = mapped_column(Integer, index=True)
    user_id: Mapped[int | None] = mapped_column(Integer)
    number: Mapped[int] = mapped_column(Integer)
    node: Mapped[str] = mapped_column(String(128))
    placement: Mapped[str] = mapped_column(Text)  # JSON: workers, gpu indexes, shares
    gpu_type: Mapped[str | None] = mapped_column(String(64))
    gpu_share_milli: Mapped[int] = mapped_column(Integer, default=0)  # over all workers
    cpu_milli: Mapped[int] = mapped_column(Integer, default=0)
    pid: Mapped[int | None] = mapped_column(Integer)
    pid_started: Mapped[float | None] = mapped_column(Float)  # guards against pid reuse
    token_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)  # the job token, sealed
    state: Mapped[str] = mapped_column(String(16), default="admitted")
    reason: Mapped[str] = mapped_column(String(1000), default="")
    exit_code: Mapped[int | None] = mapped_column(Integer)
    admitted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column()
    ended_at: Mapped[dt.datetime | None] = mapped_column()
    wall_s: Mapped[float] = mapped_column(Float, default=0.0)
    cpu_s: Mapped[float] = mapped_column(Float, default=0.0)
    gpu_s: Mapped[float] = mapped_column(Float, default=0.0)
    energy_kwh: Mapped[float] = mapped_column(Float, default=0.0)
    energy_estimated: Mapped[bool] = mapped_column(Boolean, default=True)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    carbon_g: Mapped[float] = mapped_column(Float, default=0.0)
    billed: Mapped[bool] = mapped_column(Boolean, default=False)


class QuotaRow(ProjectScoped, Base):
    __tablename__ = "quotas"
    __table_args__ = (UniqueConstraint("project_id", "accelerator_type"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    accelerator_type: Mapped[str] = mapped_column(String(64))
    guaranteed: Mapped[int] = mapped_column(Integer)
    borrow_limit: Mapped[int | None] = mapped_column(Integer)


class Budget(ProjectScoped, Base):
    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("project_id"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gpu_hours_per_month: Mapped[float | None] = mapped_column(Float)
    money_per_month: Mapped[float | None] = mapped_column(Float)
    warn_fraction: Mapped[float] = mapped_column(Float, default=0.8)


class Alert(Base):
    """Something an owner or an admin should look at: an idle GPU, a budget nearly spent."""

    __tablename__ = "alerts"
    __table_args__ = MONOTONIC

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    project_id: Mapped[int | None] = mapped_column(Integer, index=True)
    job_id: Mapped[int | None] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column()
    # since 0021 (monitoring.alerts): how bad, who raised it, repeats while open, silencing
    severity: Mapped[str] = mapped_column(String(16), default="warning", server_default="warning")
    source: Mapped[str] = mapped_column(String(32), default="", server_default="")
    details: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")  # JSON
    count: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    last_seen: Mapped[dt.datetime | None] = mapped_column()
    silenced: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
