"""retraining loop: a policy per deployment and the loop's runs

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import underlay.store.types

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

_TS = underlay.store.types.UTCDateTime(timezone=True)


def _project_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["project_id"],
        ["projects.id"],
        name=op.f(f"fk_{table}_project_id_projects"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "retrain_policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment", sa.String(length=63), nullable=False),
        sa.Column("pipeline", sa.String(length=63), nullable=False),
        sa.Column("pipeline_file", sa.String(length=255), nullable=False),
        sa.Column("workdir_digest", sa.String(length=64), nullable=False),
        sa.Column("table", sa.String(length=63), nullable=False),
        sa.Column("artifact", sa.String(length=255), nullable=False),
        sa.Column("task", sa.String(length=16), nullable=False),
        sa.Column("drift_share", sa.Float(), nullable=False),
        sa.Column("metric_floor", sa.Float(), nullable=True),
        sa.Column("margin", sa.Float(), nullable=False),
        sa.Column("holdout_share", sa.Float(), nullable=False),
        sa.Column("min_rows", sa.Integer(), nullable=False),
        sa.Column("canary_weight", sa.Float(), nullable=False),
        sa.Column("canary_window_s", sa.Float(), nullable=False),
        sa.Column("canary_min_requests", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("cooldown_s", sa.Float(), nullable=False),
        sa.Column("cpus", sa.Float(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("env", sa.Text(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_retrain_policies_owner_id_users"),
            ondelete="SET NULL",
        ),
        _project_fk("retrain_policies"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrain_policies")),
        sa.UniqueConstraint(
            "project_id", "deployment", name=op.f("uq_retrain_policies_project_id")
        ),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("retrain_policies", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_retrain_policies_project_id"), ["project_id"], unique=False
        )
    op.create_table(
        "retrain_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment", sa.String(length=63), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("table_version", sa.String(length=128), nullable=True),
        sa.Column("champion_version", sa.Integer(), nullable=False),
        sa.Column("challenger_version", sa.Integer(), nullable=True),
        sa.Column("training_job_id", sa.Integer(), nullable=True),
        sa.Column("tracking_run_id", sa.Integer(), nullable=True),
        sa.Column("evaluation", sa.Text(), nullable=False),
        sa.Column("canary", sa.Text(), nullable=False),
        sa.Column("steps", sa.Text(), nullable=False),
        sa.Column("reason", sa.String(length=2000), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("approved_by", sa.String(length=128), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("policy_id", sa.Integer(), nullable=True),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["retrain_policies.id"],
            name=op.f("fk_retrain_runs_policy_id_retrain_policies"),
            ondelete="SET NULL",
        ),
        _project_fk("retrain_runs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrain_runs")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("retrain_runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_retrain_runs_project_deployment", ["project_id", "deployment"], unique=False
        )
        batch_op.create_index("ix_retrain_runs_state", ["state"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_retrain_runs_project_id"), ["project_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("retrain_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retrain_runs_project_id"))
        batch_op.drop_index("ix_retrain_runs_state")
        batch_op.drop_index("ix_retrain_runs_project_deployment")
    op.drop_table("retrain_runs")
    with op.batch_alter_table("retrain_policies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retrain_policies_project_id"))
    op.drop_table("retrain_policies")
