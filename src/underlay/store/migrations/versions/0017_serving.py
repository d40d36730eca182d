"""Serving: deployments, their replicas and events, and the daily budget counters

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import underlay.store.types

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "serving_budget_usage",
        sa.Column("token_key", sa.String(length=128), nullable=False),
        sa.Column("deployment_key", sa.String(length=256), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "token_key", "deployment_key", "day", name=op.f("pk_serving_budget_usage")
        ),
    )
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("model", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("target_version", sa.Integer(), nullable=False),
        sa.Column("canary_version", sa.Integer(), nullable=True),
        sa.Column("canary_weight", sa.Float(), nullable=False),
        sa.Column("canary_policy", sa.Text(), nullable=False),
        sa.Column("canary_state", sa.String(length=16), nullable=False),
        sa.Column(
            "canary_started_at", underlay.store.types.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("replicas", sa.Integer(), nullable=False),
        sa.Column("cpus", sa.Float(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("gpu_fraction", sa.Float(), nullable=True),
        sa.Column("max_batch", sa.Integer(), nullable=False),
        sa.Column("max_wait_ms", sa.Float(), nullable=False),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_deployments_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_deployments_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_deployments_project_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deployments_project_id"), ["project_id"], unique=False)

    op.create_table(
        "deployment_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_events_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_deployment_events_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_events")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("deployment_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deployment_events_deployment_at", ["deployment_id", "at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_deployment_events_deployment_id"), ["deployment_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_deployment_events_project_id"), ["project_id"], unique=False
        )

    op.create_table(
        "deployment_replicas",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("arm", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("secret_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("url", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("stop_at", underlay.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_replicas_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_deployment_replicas_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_replicas")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("deployment_replicas", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deployment_replicas_deployment_id"), ["deployment_id"], unique=False
        )
        batch_op.create_index(
            "ix_deployment_replicas_deployment_slot", ["deployment_id", "slot"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_deployment_replicas_job_id"), ["job_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_deployment_replicas_project_id"), ["project_id"], unique=False
        )


def downgrade() -> None:
    op.drop_table("serving_budget_usage")
    with op.batch_alter_table("deployment_replicas", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployment_replicas_project_id"))
        batch_op.drop_index(batch_op.f("ix_deployment_replicas_job_id"))
        batch_op.drop_index("ix_deployment_replicas_deployment_slot")
        batch_op.drop_index(batch_op.f("ix_deployment_replicas_deployment_id"))

    op.drop_table("deployment_replicas")
    with op.batch_alter_table("deployment_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployment_events_project_id"))
        batch_op.drop_index(batch_op.f("ix_deployment_events_deployment_id"))
        batch_op.drop_index("ix_deployment_events_deployment_at")

    op.drop_table("deployment_events")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployments_project_id"))

    op.drop_table("deployments")
