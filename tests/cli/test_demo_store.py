"""Where the demo keeps its metadata (``underlay.cli.demo_store``): SQLite in its own home,
or a database made for the run on the PostgreSQL server that UNDERLAY_STORE__URL names."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PG_ADMIN_URL
from underlay.cli.demo_store import demo_database


def _databases() -> set[str]:
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            return set(conn.scalars(text("SELECT datname FROM pg_database")))
    finally:
        engine.dispose()


@pytest.mark.parametrize("url", [None, "", "sqlite:////tmp/elsewhere.db"])
def test_without_postgresql_the_demo_keeps_sqlite_in_its_home(url: str | None) -> None:
    with demo_database(url) as store_url:
        assert store_url is None


@pytest.mark.postgres
def test_on_postgresql_the_demo_gets_a_database_of_its_own_dropped_after_it() -> None:
    before = _databases()
    with demo_database(PG_ADMIN_URL) as store_url:
        assert store_url is not None
        name = store_url.rsplit("/", 1)[-1]
        assert name.startswith("underlay_demo_") and name not in before
        assert name in _databases()
        engine = create_engine(store_url)
        with engine.connect() as conn:  # reachable, and empty
            assert (
                conn.scalar(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")) == 0
            )
        engine.dispose()
    assert name not in _databases()


@pytest.mark.postgres
def test_a_kept_demo_keeps_its_database() -> None:
    with demo_database(PG_ADMIN_URL, keep=True) as store_url:
        assert store_url is not None
    name = store_url.rsplit("/", 1)[-1]
    try:
        assert name in _databases()
    finally:
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        engine.dispose()
