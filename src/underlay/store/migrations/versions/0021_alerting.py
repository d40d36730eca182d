"""Alerting: severities, sources, repeat counts and silencing on alerts; rules, silences,
webhooks and the webhook delivery outbox

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import underlay.store.types

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def _by(table: str) -> sa.Column[int]:
    return sa.Column("created_by", sa.Integer(), nullable=True)


def _fks(table: str) -> list[sa.ForeignKeyConstraint]:
    return [
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f(f"fk_{table}_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f(f"fk_{table}_project_id_projects"),
            ondelete="CASCADE",
        ),
    ]


def _when(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, underlay.store.types.UTCDateTime(), nullable=nullable)


def _sequence() -> int | None:
    """SQLite's last handed-out alert id (None elsewhere): a table copy must keep it."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return None
    query = sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'alerts'")
    return int(bind.execute(query).scalar() or 0)


def _restore_sequence(seq: int | None) -> None:
    if not seq:
        return
    bind = op.get_bind()
    bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'alerts'"))
    bind.execute(
        sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('alerts', :n)"), {"n": seq}
    )


# the table copy SQLite needs keeps ids monotonic (AUTOINCREMENT, see 0003)
_ALERTS = {"table_kwargs": {"sqlite_autoincrement": True}, "recreate": "always"}


def upgrade() -> None:
    seq = _sequence()
    with op.batch_alter_table("alerts", schema=None, **_ALERTS) as batch_op:  # type: ignore[arg-type]
        batch_op.add_column(
            sa.Column("severity", sa.String(length=16), server_default="warning", nullable=False)
        )
        batch_op.add_column(
            sa.Column("source", sa.String(length=32), server_default="", nullable=False)
        )
        batch_op.add_column(sa.Column("details", sa.Text(), server_default="{}", nullable=False))
        batch_op.add_column(sa.Column("count", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(_when("last_seen", nullable=True))
        batch_op.add_column(
            sa.Column("silenced", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    alerts = sa.table("alerts", sa.column("last_seen"), sa.column("created_at"))
    op.execute(sa.update(alerts).values(last_seen=alerts.c.created_at))
    _restore_sequence(seq)

    op.create_table(
        "alert_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("metric", sa.String(length=63), nullable=False),
        sa.Column("comparison", sa.String(length=2), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("cooldown_s", sa.Float(), nullable=False),
        _by("alert_rules"),
        _when("created_at"),
        sa.Column("project_id", sa.Integer(), nullable=False),
        *_fks("alert_rules"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_rules")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_alert_rules_project_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("alert_rules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_rules_project_id"), ["project_id"])
        batch_op.create_index(batch_op.f("ix_alert_rules_source"), ["source"])

    op.create_table(
        "alert_silences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        _when("until"),
        sa.Column("reason", sa.String(length=500), nullable=False),
        _by("alert_silences"),
        _when("created_at"),
        sa.Column("project_id", sa.Integer(), nullable=False),
        *_fks("alert_silences"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_silences")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("alert_silences", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_silences_project_id"), ["project_id"])

    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("secret_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("min_severity", sa.String(length=16), nullable=False),
        sa.Column("kinds", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        _by("webhooks"),
        _when("created_at"),
        sa.Column("project_id", sa.Integer(), nullable=False),
        *_fks("webhooks"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_webhooks_project_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhooks_project_id"), ["project_id"])

    op.create_table(
        "alert_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=True),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _when("next_attempt_at"),
        sa.Column("last_error", sa.String(length=500), nullable=False),
        _when("created_at"),
        _when("delivered_at", nullable=True),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_id"],
            ["alerts.id"],
            name=op.f("fk_alert_deliveries_alert_id_alerts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_alert_deliveries_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.id"],
            name=op.f("fk_alert_deliveries_webhook_id_webhooks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_deliveries")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("alert_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_deliveries_alert_id"), ["alert_id"])
        batch_op.create_index("ix_alert_deliveries_due", ["state", "next_attempt_at"])
        batch_op.create_index(batch_op.f("ix_alert_deliveries_project_id"), ["project_id"])
        batch_op.create_index(batch_op.f("ix_alert_deliveries_webhook_id"), ["webhook_id"])


def downgrade() -> None:
    op.drop_table("alert_deliveries")
    op.drop_table("webhooks")
    op.drop_table("alert_silences")
    op.drop_table("alert_rules")
    seq = _sequence()
    with op.batch_alter_table("alerts", schema=None, **_ALERTS) as batch_op:  # type: ignore[arg-type]
        for column in ("silenced", "last_seen", "count", "details", "source", "severity"):
            batch_op.drop_column(column)
    _restore_sequence(seq)
