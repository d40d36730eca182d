"""The PostgreSQL reset every ``database_url`` test starts from (tests/conftest.py): the
schema at head, no rows of the previous test, ids from 1 again, and the rows the migrations
themselves wrote (the audit chain's head)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from tests.conftest import _reset_pg
from underlay.store import Database, Scope
from underlay.store.models import Project

pytestmark = pytest.mark.postgres


def _add_project(db: Database, name: str) -> int:
    with db.session(Scope.everything()) as s:
        project = Project(name=name)
        s.add(project)
        s.flush()
        return project.id


def _state(db: Database) -> tuple[int, tuple[int, str], str]:
    with db.session(Scope.everything()) as s:
        projects = s.execute(text("SELECT count(*) FROM projects")).scalar_one()
        head = s.execute(text("SELECT seq, hash FROM audit_head WHERE id = 1")).one()
        revision = s.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    return projects, (head[0], head[1]), revision


def test_a_reset_leaves_no_rows_restarts_ids_and_keeps_the_migrations_rows(
    pg_url: str, tmp_path: Path
) -> None:
    _reset_pg(pg_url)
    db = Database(pg_url)
    try:
        fresh = _state(db)
        assert fresh[0] == 0 and fresh[1] == (0, "0" * 64)
        assert fresh[2] == db.head_revision()
        assert _add_project(db, "a") == 1
        assert _add_project(db, "b") == 2
        with db.session(Scope.everything()) as s:
            s.execute(
                text("UPDATE audit_head SET seq = 5, hash = :h WHERE id = 1"), {"h": "f" * 64}
            )
        db.dispose()
        _reset_pg(pg_url)  # the quick path: the migrated tables at head
        assert _state(db) == fresh
        assert _add_project(db, "c") == 1  # ids start again, as in a new database
    finally:
        db.dispose()


def test_a_database_left_at_an_older_revision_is_migrated_to_head_again(
    pg_url: str, tmp_path: Path
) -> None:
    _reset_pg(pg_url)
    db = Database(pg_url)
    try:
        _add_project(db, "a")
        command.downgrade(db.alembic_config(), "0002")
        db.dispose()
        _reset_pg(pg_url)
        projects, head, revision = _state(db)
        assert (projects, head, revision) == (0, (0, "0" * 64), db.head_revision())
    finally:
        db.dispose()
