"""Store contract tests: migrations and tenant scope, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from underlay.errors import PermissionDenied
from underlay.store import Database, Scope
from underlay.store.models import LineageEdge, Project


def _two_projects(db: Database) -> tuple[int, int]:
    with db.session(Scope.everything()) as s:
        a, b = Project(name="a"), Project(name="b")
        s.add_all([a, b])
        s.flush()
        for p in (a, b):
            s.add(
                LineageEdge(
                    project_id=p.id,
                    src_kind="blob",
                    src_id=p.name,
                    relation="used_by",
                    dst_kind="run",
                    dst_id="1",
                )
            )
        return a.id, b.id


def test_migrate_is_idempotent_and_at_head(db: Database) -> None:
    db.migrate()
    assert db.current_revision() == db.head_revision() is not None


def test_scope_filters_rows_of_other_projects(db: Database) -> None:
    a, _b = _two_projects(db)
    with db.session(Scope.projects(a)) as s:
        rows = s.scalars(select(LineageEdge)).all()
    assert [r.src_id for r in rows] == ["a"]
    with db.session(Scope.everything()) as s:
        assert len(s.scalars(select(LineageEdge)).all()) == 2


def test_scope_refuses_writes_to_other_projects(db: Database) -> None:
    a, b = _two_projects(db)
    with pytest.raises(PermissionDenied, match="outside"), db.session(Scope.projects(a)) as s:
        s.add(
            LineageEdge(
                project_id=b, src_kind="x", src_id="1", relation="r", dst_kind="y", dst_id="2"
            )
        )
    with db.session(Scope.everything()) as s:
        assert len(s.scalars(select(LineageEdge)).all()) == 2


def test_session_without_scope_fails_closed(db: Database) -> None:
    session = db._sessions()
    try:
        with pytest.raises(PermissionDenied, match="scope"):
            session.scalars(select(LineageEdge)).all()
    finally:
        session.close()


def test_migrations_match_the_models(db: Database) -> None:
    """Every model change ships with its migration (autogenerate finds nothing to do)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import underlay.compute.models  # noqa: F401  - registers the compute tables
    from underlay.store.models import Base

    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
