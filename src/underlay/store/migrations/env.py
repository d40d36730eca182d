"""Alembic environment: runs on the engine :class:`underlay.store.Database` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

import underlay.store.models  # noqa: F401  - registers the kernel tables
from underlay.store.models import Base

config = context.config
engine = config.attributes.get("engine")
if not isinstance(engine, Engine):
    raise RuntimeError("run migrations through underlay.store.Database.migrate()")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
