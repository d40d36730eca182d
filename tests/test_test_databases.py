"""The PostgreSQL reset every ``database_url`` test starts from (tests/conftest.py): the
schema at head, no rows of the previous test, ids from 1 again, and the rows the migrations
themselves wrote (the audit chain's head)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import text

from tests.conftest import _reset_pg, add_project
from underlay.store import Database, Scope

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    """The session's PostgreSQL database, reset as a test's would be."""
    _reset_pg(pg_url)
    database = Database(pg_url)
    try:
        yield database
    finally:
        database.dispose()


def _state(db: Database) -> tuple[int, tuple[int, str], str]:
    with db.session(Scope.everything()) as s:
        projects = s.execute(text("SELECT count(*) FROM projects")).scalar_one()
        head = s.execute(text("SELECT seq, hash FROM audit_head WHERE id = 1")).one()
        revision = s.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    return projects, (head[0], head[1]), revision


def test_a_reset_leaves_no_rows_restarts_ids_and_keeps_the_migrations_rows(
    db: Database, pg_url: str
) -> None:
    fresh = _state(db)
    assert fresh[0] == 0 and fresh[1] == (0, "0" * 64)
    assert fresh[2] == db.head_revision()
    assert add_project(db, "a") == 1
    assert add_project(db, "b") == 2
    with db.session(Scope.everything()) as s:
        s.execute(text("UPDATE audit_head SET seq = 5, hash = :h WHERE id = 1"), {"h": "f" * 64})
    db.dispose()
    _reset_pg(pg_url)  # the quick path: the migrated tables at head
    assert _state(db) == fresh
    assert add_project(db, "c") == 1  # ids start again, as in a new database


def test_a_database_left_at_an_older_revision_is_migrated_to_head_again(
    db: Database, pg_url: str
) -> None:
    add_project(db, "a")
    command.downgrade(db.alembic_config(), "0002")
    db.dispose()
    _reset_pg(pg_url)
    assert _state(db) == (0, (0, "0" * 64), db.head_revision())
