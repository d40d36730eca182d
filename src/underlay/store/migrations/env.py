"""Alembic environment: runs on the engine :class:`underlay.store.Database` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, Engine

import underlay.store.models  # noqa: F401  - registers the kernel tables
from underlay.store.models import Base

config = context.config
engine = config.attributes.get("engine")
if not isinstance(engine, Engine):
    raise RuntimeError("run migrations through underlay.store.Database.migrate()")


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    """Batch migrations recreate a table (copy, drop the old one, rename): with foreign keys
    on, dropping a referenced table would cascade-delete the rows that reference it. SQLite
    ignores this pragma inside a transaction, so it goes to the driver before one begins."""
    connection.connection.driver_connection.execute(  # type: ignore[union-attr]
        f"PRAGMA foreign_keys={'ON' if on else 'OFF'}"
    )


with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _sqlite_foreign_keys(connection, False)
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        if sqlite:
            connection.rollback()
            _sqlite_foreign_keys(connection, True)
