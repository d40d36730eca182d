"""model registry: models, signed versions, their files, aliases and alias history

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import underlay.store.types

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registered_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("intended_use", sa.Text(), nullable=False),
        sa.Column("limitations", sa.Text(), nullable=False),
        sa.Column("license", sa.String(length=255), nullable=False),
        sa.Column("data_license", sa.String(length=255), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_registered_models_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_registered_models_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registered_models")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_registered_models_project_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("registered_models", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_registered_models_project_id"), ["project_id"], unique=False
        )

    op.create_table(
        "model_alias_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_models.id"],
            name=op.f("fk_model_alias_events_model_id_registered_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_model_alias_events_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_alias_events")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("model_alias_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_model_alias_events_model_alias_at", ["model_id", "alias", "at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_model_alias_events_model_id"), ["model_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_model_alias_events_project_id"), ["project_id"], unique=False
        )

    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("artifact_path", sa.String(length=1024), nullable=False),
        sa.Column("flavor", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("total_size", sa.BigInteger(), nullable=False),
        sa.Column("manifest", sa.LargeBinary(), nullable=False),
        sa.Column("manifest_signature", sa.LargeBinary(), nullable=True),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_model_versions_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_models.id"],
            name=op.f("fk_model_versions_model_id_registered_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_model_versions_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_model_versions_run_id_runs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("model_id", "version", name=op.f("uq_model_versions_model_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_versions_model_id"), ["model_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_model_versions_project_id"), ["project_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_model_versions_run_id"), ["run_id"], unique=False)

    op.create_table(
        "model_aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=63), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_models.id"],
            name=op.f("fk_model_aliases_model_id_registered_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_model_aliases_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_aliases_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_aliases")),
        sa.UniqueConstraint("model_id", "alias", name=op.f("uq_model_aliases_model_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_aliases_model_id"), ["model_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_model_aliases_project_id"), ["project_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_model_aliases_version_id"), ["version_id"], unique=False
        )

    op.create_table(
        "model_version_files",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id", "digest"],
            ["blobs.project_id", "blobs.digest"],
            name=op.f("fk_model_version_files_project_id_blobs"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_model_version_files_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_version_files_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "path", name=op.f("pk_model_version_files")),
    )
    with op.batch_alter_table("model_version_files", schema=None) as batch_op:
        batch_op.create_index(
            "ix_model_version_files_project_digest", ["project_id", "digest"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_model_version_files_project_id"), ["project_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("model_version_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_version_files_project_id"))
        batch_op.drop_index("ix_model_version_files_project_digest")

    op.drop_table("model_version_files")
    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_aliases_version_id"))
        batch_op.drop_index(batch_op.f("ix_model_aliases_project_id"))
        batch_op.drop_index(batch_op.f("ix_model_aliases_model_id"))

    op.drop_table("model_aliases")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_versions_run_id"))
        batch_op.drop_index(batch_op.f("ix_model_versions_project_id"))
        batch_op.drop_index(batch_op.f("ix_model_versions_model_id"))

    op.drop_table("model_versions")
    with op.batch_alter_table("model_alias_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_alias_events_project_id"))
        batch_op.drop_index(batch_op.f("ix_model_alias_events_model_id"))
        batch_op.drop_index("ix_model_alias_events_model_alias_at")

    op.drop_table("model_alias_events")
    with op.batch_alter_table("registered_models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registered_models_project_id"))

    op.drop_table("registered_models")
