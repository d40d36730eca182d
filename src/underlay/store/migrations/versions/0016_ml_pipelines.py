"""ML pipeline runs and their step calls

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import underlay.store.types

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ml_pipeline_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pipeline", sa.String(length=63), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("sweeps", sa.Text(), nullable=False),
        sa.Column("error", sa.String(length=2000), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("started_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", underlay.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_ml_pipeline_runs_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_ml_pipeline_runs_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ml_pipeline_runs")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("ml_pipeline_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ml_pipeline_runs_project_id"), ["project_id"], unique=False
        )
        batch_op.create_index(
            "ix_ml_pipeline_runs_project_pipeline", ["project_id", "pipeline"], unique=False
        )
    op.create_table(
        "ml_pipeline_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=48), nullable=False),
        sa.Column("step", sa.String(length=40), nullable=False),
        sa.Column("sweep", sa.String(length=40), nullable=True),
        sa.Column("code_digest", sa.String(length=64), nullable=False),
        sa.Column("cache_key", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("outputs", sa.Text(), nullable=False),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.Column("resources", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cached_from", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("started_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", underlay.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_ml_pipeline_steps_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["ml_pipeline_runs.id"],
            name=op.f("fk_ml_pipeline_steps_run_id_ml_pipeline_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ml_pipeline_steps")),
        sa.UniqueConstraint("run_id", "key", name=op.f("uq_ml_pipeline_steps_run_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("ml_pipeline_steps", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ml_pipeline_steps_project_id"), ["project_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_ml_pipeline_steps_run_id"), ["run_id"], unique=False)
        batch_op.create_index(
            "ix_ml_pipeline_steps_project_cache_key", ["project_id", "cache_key"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("ml_pipeline_steps", schema=None) as batch_op:
        batch_op.drop_index("ix_ml_pipeline_steps_project_cache_key")
        batch_op.drop_index(batch_op.f("ix_ml_pipeline_steps_run_id"))
        batch_op.drop_index(batch_op.f("ix_ml_pipeline_steps_project_id"))
    op.drop_table("ml_pipeline_steps")
    with op.batch_alter_table("ml_pipeline_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_ml_pipeline_runs_project_pipeline")
        batch_op.drop_index(batch_op.f("ix_ml_pipeline_runs_project_id"))
    op.drop_table("ml_pipeline_runs")
