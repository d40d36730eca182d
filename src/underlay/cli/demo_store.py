"""Where ``underlay demo`` keeps its metadata: SQLite in its fresh home by default, or, when
``UNDERLAY_STORE__URL`` names a PostgreSQL server, a database of its own made on that server
for the run and dropped after it (so the demo runs "unchanged" on the cluster's store without
touching what that store already holds; docs/scaling.md)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

_DISCONNECT = text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n")


@contextlib.contextmanager
def demo_database(store_url: str | None, *, keep: bool = False) -> Iterator[str | None]:
    """Yields the store URL the demo's server gets: None (SQLite in the home) unless
    ``store_url`` is PostgreSQL; then a new database ``underlay_demo_<hex>`` on that server,
    dropped on the way out unless ``keep``."""
    if not store_url or not store_url.startswith("postgresql"):
        yield None
        return
    url = make_url(store_url)
    name = f"underlay_demo_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))  # a name made above: no user text
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        if not keep:
            with admin.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                    ),
                    {"n": name},
                )
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
