"""delta tables

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import underlay.store.types

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_tables",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("published_version", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_data_tables_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_data_tables_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_tables")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_data_tables_project_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("data_tables", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_data_tables_project_id"), ["project_id"], unique=False)

    op.create_table(
        "data_table_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("table_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("rows_written", sa.BigInteger(), nullable=False),
        sa.Column("rows_quarantined", sa.BigInteger(), nullable=False),
        sa.Column("num_rows", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", underlay.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_data_table_versions_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_data_table_versions_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["table_id"],
            ["data_tables.id"],
            name=op.f("fk_data_table_versions_table_id_data_tables"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_table_versions")),
        sa.UniqueConstraint("table_id", "version", name=op.f("uq_data_table_versions_table_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("data_table_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_data_table_versions_project_id"), ["project_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_data_table_versions_table_id"), ["table_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("data_table_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_data_table_versions_table_id"))
        batch_op.drop_index(batch_op.f("ix_data_table_versions_project_id"))

    op.drop_table("data_table_versions")
    with op.batch_alter_table("data_tables", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_data_tables_project_id"))

    op.drop_table("data_tables")
