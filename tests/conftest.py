"""Shared fixtures. The store fixtures run each contract test on SQLite and on PostgreSQL.

PostgreSQL tests use a fresh database per test session (created and dropped here), so runs
never see each other's rows. Set ``UNDERLAY_TEST_PG`` to point at another server.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from underlay.config import Settings, ensure_home
from underlay.store import Database

PG_ADMIN_URL = os.environ.get(
    "UNDERLAY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A throw-away PostgreSQL database for this test session."""
    name = f"underlay_test_{secrets.token_hex(6)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def _reset_pg(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty metadata database, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'underlay.db'}"
    url: str = request.getfixturevalue("pg_url")
    _reset_pg(url)
    return url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings with a fresh home folder and the backend under test."""
    home = tmp_path / "home"
    s = Settings(home=home, store={"url": database_url})
    ensure_home(s)
    return s


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    """A migrated database on the backend under test."""
    database = Database(settings.database_url)
    database.migrate(lock_dir=settings.home)
    try:
        yield database
    finally:
        database.dispose()
