"""pipeline runs

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import underlay.store.types

revision = "0012"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pipeline_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pipeline", sa.String(length=63), nullable=False),
        sa.Column("spec_digest", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("output_table", sa.String(length=63), nullable=False),
        sa.Column("output_version", sa.Integer(), nullable=True),
        sa.Column("rows_in", sa.BigInteger(), nullable=False),
        sa.Column("rows_out", sa.BigInteger(), nullable=False),
        sa.Column("rows_rejected", sa.BigInteger(), nullable=False),
        sa.Column("rows_quarantined", sa.BigInteger(), nullable=False),
        sa.Column("steps", sa.Text(), nullable=False),
        sa.Column("error", sa.String(length=2000), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("started_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", underlay.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_pipeline_runs_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_pipeline_runs_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipeline_runs")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("pipeline_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pipeline_runs_project_id"), ["project_id"], unique=False
        )
        batch_op.create_index(
            "ix_pipeline_runs_project_pipeline", ["project_id", "pipeline"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("pipeline_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_pipeline_runs_project_pipeline")
        batch_op.drop_index(batch_op.f("ix_pipeline_runs_project_id"))

    op.drop_table("pipeline_runs")
