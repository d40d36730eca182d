"""experiment tracking: experiments, runs, params, tags, metrics, inputs, artifacts

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import underlay.store.types

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_experiments_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_experiments_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_experiments_project_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_experiments_project_id"), ["project_id"], unique=False)

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("git_commit", sa.String(length=64), nullable=True),
        sa.Column("environment", sa.Text(), nullable=False),
        sa.Column("error", sa.String(length=2000), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("started_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", underlay.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_runs_created_by_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_runs_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_runs_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_runs_project_experiment", ["project_id", "experiment_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_runs_project_id"), ["project_id"], unique=False)

    op.create_table(
        "latest_metrics",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_latest_metrics_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_latest_metrics_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "key", name=op.f("pk_latest_metrics")),
    )
    with op.batch_alter_table("latest_metrics", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_latest_metrics_project_id"), ["project_id"], unique=False
        )
        batch_op.create_index(
            "ix_latest_metrics_project_key_value", ["project_id", "key", "value"], unique=False
        )

    op.create_table(
        "metrics",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("step", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_metrics_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "key", "step", name=op.f("pk_metrics")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "run_artifacts",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("media_type", sa.String(length=127), nullable=False),
        sa.Column("created_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id", "digest"],
            ["blobs.project_id", "blobs.digest"],
            name=op.f("fk_run_artifacts_project_id_blobs"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_run_artifacts_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_artifacts_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "path", name=op.f("pk_run_artifacts")),
    )
    with op.batch_alter_table("run_artifacts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_run_artifacts_project_digest", ["project_id", "digest"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_run_artifacts_project_id"), ["project_id"], unique=False
        )

    op.create_table(
        "run_batches",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("created_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_run_batches_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_batches_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "batch_id", name=op.f("pk_run_batches")),
    )
    with op.batch_alter_table("run_batches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_batches_project_id"), ["project_id"], unique=False)

    op.create_table(
        "run_inputs",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_run_inputs_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_inputs_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "kind", "name", "version", name=op.f("pk_run_inputs")),
    )
    with op.batch_alter_table("run_inputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_inputs_project_id"), ["project_id"], unique=False)

    op.create_table(
        "run_params",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("value", sa.String(length=6000), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_run_params_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_params_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "key", name=op.f("pk_run_params")),
    )
    with op.batch_alter_table("run_params", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_params_project_id"), ["project_id"], unique=False)

    op.create_table(
        "run_tags",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("value", sa.String(length=6000), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_run_tags_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_tags_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "key", name=op.f("pk_run_tags")),
    )
    with op.batch_alter_table("run_tags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_tags_project_id"), ["project_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run_tags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_tags_project_id"))

    op.drop_table("run_tags")
    with op.batch_alter_table("run_params", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_params_project_id"))

    op.drop_table("run_params")
    with op.batch_alter_table("run_inputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_inputs_project_id"))

    op.drop_table("run_inputs")
    with op.batch_alter_table("run_batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_batches_project_id"))

    op.drop_table("run_batches")
    with op.batch_alter_table("run_artifacts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_artifacts_project_id"))
        batch_op.drop_index("ix_run_artifacts_project_digest")

    op.drop_table("run_artifacts")
    op.drop_table("metrics")
    with op.batch_alter_table("latest_metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_latest_metrics_project_key_value")
        batch_op.drop_index(batch_op.f("ix_latest_metrics_project_id"))

    op.drop_table("latest_metrics")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_project_id"))
        batch_op.drop_index("ix_runs_project_experiment")

    op.drop_table("runs")
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_experiments_project_id"))

    op.drop_table("experiments")
