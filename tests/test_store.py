"""Store contract tests: migrations and tenant scope, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import secrets
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import aliased

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


def test_session_without_scope_refuses_writes(db: Database) -> None:
    a, _b = _two_projects(db)
    session = db._sessions()
    try:
        session.add(
            LineageEdge(
                project_id=a, src_kind="x", src_id="1", relation="r", dst_kind="y", dst_id="2"
            )
        )
        with pytest.raises(PermissionDenied, match="write outside the session's project scope"):
            session.flush()
    finally:
        session.close()
    with db.session(Scope.everything()) as s:
        assert len(s.scalars(select(LineageEdge)).all()) == 2


def test_migrations_match_the_models(db: Database) -> None:
    """Every model change ships with its migration (autogenerate finds nothing to do)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import underlay.compute.models
    import underlay.data.models
    import underlay.ml.models
    import underlay.ml.pipelines.models
    import underlay.ml.registry.models
    import underlay.monitoring.alert_models
    import underlay.monitoring.loop_models
    import underlay.monitoring.models
    import underlay.serving.models  # noqa: F401  - registers the data, ml and serving tables
    from underlay.store.models import Base

    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


# -- ids are never reused ---------------------------------------------------------------------


_NUMBERS = itertools.count(1)


def _rows(project_id: int, job_id: int | None = None) -> dict[str, object]:
    """One row of each kind whose id the review saw reused, given its parents."""
    from underlay.compute.models import Alert, Job, JobAttempt

    return {
        "job": Job(project_id=project_id, command="[]"),
        "attempt": JobAttempt(
            job_id=job_id or 0,
            project_id=project_id,
            number=next(_NUMBERS),
            node="n",
            placement="{}",
        ),
        "alert": Alert(kind="idle_gpu", project_id=project_id, subject="s", message="m"),
    }


def _create(db: Database, kind: str, parent: dict[str, int]) -> int:
    with db.session(Scope.everything()) as s:
        row: object
        if kind == "project":
            row = Project(name=f"p{secrets.token_hex(4)}")
        else:
            row = _rows(parent["project"], parent.get("job"))[kind]
        s.add(row)
        s.flush()
        return int(row.id)  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["project", "job", "attempt", "alert"])
def test_deleting_the_newest_row_never_frees_its_id(db: Database, kind: str) -> None:
    import underlay.compute.models as cm

    parent = {"project": _create(db, "project", {})}
    parent["job"] = _create(db, "job", parent)
    model = {"project": Project, "job": cm.Job, "attempt": cm.JobAttempt, "alert": cm.Alert}[kind]
    first = _create(db, kind, parent)
    newest = _create(db, kind, parent)
    with db.session(Scope.everything()) as s:
        s.delete(s.get(model, newest))
    again = _create(db, kind, parent)
    assert first < newest < again


def test_every_surrogate_key_is_monotonic_on_sqlite() -> None:
    """A new table cannot forget AUTOINCREMENT: every single integer key needs MONOTONIC."""
    import underlay.compute.models
    import underlay.data.models
    import underlay.ml.models
    import underlay.ml.registry.models
    import underlay.monitoring.loop_models
    import underlay.monitoring.models
    import underlay.serving.models  # noqa: F401  - registers the data, ml and serving tables
    from underlay.store.models import Base

    forgot = [
        t.name
        for t in Base.metadata.sorted_tables
        if [c.name for c in t.primary_key.columns] == ["id"]
        and t.name != "audit_head"  # one row, id 1, never deleted
        and not t.dialect_kwargs.get("sqlite_autoincrement")
    ]
    assert forgot == []


def test_upgrade_keeps_rows_and_never_reuses_an_id_still_referenced(tmp_path: Path) -> None:
    """Upgrading a database made before AUTOINCREMENT: rows and their children survive (no
    cascade on the table copy), and the ids of deleted rows that left traces are skipped."""
    from alembic import command
    from sqlalchemy import text

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(db.alembic_config(), "0002")
    with db.engine.begin() as conn:
        for statement in (
            "INSERT INTO projects (id, name, description, created_at) "
            "VALUES (1, 'a', '', '2026-01-01'), (2, 'b', '', '2026-01-01')",
            "INSERT INTO lineage_edges (project_id, src_kind, src_id, relation, dst_kind, "
            "dst_id, created_at) VALUES (1, 'blob', 'x', 'used_by', 'run', '1', '2026-01-01')",
            # project 3 was deleted before the upgrade; its alert stayed (no foreign key)
            "INSERT INTO alerts (kind, project_id, subject, message, created_at) "
            "VALUES ('idle_gpu', 3, 's', 'old tenant', '2026-01-01')",
        ):
            conn.execute(text(statement))
    db.migrate(lock_dir=tmp_path)
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM lineage_edges")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM alerts")).scalar() == 0
    assert _create(db, "project", {}) == 4
    db.dispose()


def test_migrated_sqlite_tables_keep_autoincrement(tmp_path: Path) -> None:
    """A later migration that recreates a table on SQLite (batch mode) must not drop the
    AUTOINCREMENT that keeps its ids from being reused."""
    import sqlite3

    import underlay.compute.models
    import underlay.data.models
    import underlay.ml.models
    import underlay.ml.registry.models
    import underlay.monitoring.loop_models
    import underlay.monitoring.models
    import underlay.serving.models  # noqa: F401  - registers the data, ml and serving tables
    from underlay.store.models import Base

    path = tmp_path / "head.db"
    Database(f"sqlite:///{path}").migrate(lock_dir=tmp_path)
    with sqlite3.connect(path) as conn:
        made = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    wanted = [
        t.name for t in Base.metadata.sorted_tables if t.dialect_kwargs.get("sqlite_autoincrement")
    ]
    assert wanted and [n for n in wanted if "AUTOINCREMENT" not in made[n]] == []


def test_0007_adds_scheduling_constraints_with_safe_defaults_and_reverts(db: Database) -> None:
    """Rows made before 0007 come out unconstrained: nodes without labels, jobs preemptible
    with no selector; and the migration downgrades cleanly (SQLite and PostgreSQL)."""
    from alembic import command
    from sqlalchemy import inspect, text

    cfg = db.alembic_config()
    command.downgrade(cfg, "0006")
    assert "labels" not in {c["name"] for c in inspect(db.engine).get_columns("nodes")}
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO nodes (name, hostname, cpu_milli, memory_mib, cpu_utilization, "
                "status, status_reason, simulated, info, registered_at, heartbeat_at) VALUES "
                "('old', 'h', 1000, 1024, 0, 'ready', '', false, '{}', "
                "'2026-01-01', '2026-01-01')"
            )
        )
    db.migrate()
    jobs = {c["name"] for c in inspect(db.engine).get_columns("jobs")}
    assert {"app", "max_per_node", "node_selector", "preemptible"} <= jobs
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT labels FROM nodes WHERE name = 'old'")).scalar() == "[]"


# -- the scope on every kind of statement ------------------------------------------------------


def _srcs(db: Database) -> list[tuple[str, str]]:
    with db.session(Scope.everything()) as s:
        rows = s.scalars(select(LineageEdge).order_by(LineageEdge.src_id)).all()
        return [(r.src_id, r.relation) for r in rows]


def test_bulk_updates_and_deletes_touch_only_the_scopes_rows(db: Database) -> None:
    a, _b = _two_projects(db)
    with db.session(Scope.projects(a)) as s:
        s.execute(update(LineageEdge).values(relation="renamed"))
    assert _srcs(db) == [("a", "renamed"), ("b", "used_by")]
    with db.session(Scope.projects(a)) as s:
        s.execute(delete(LineageEdge))
    assert _srcs(db) == [("b", "used_by")]
    session = db._sessions()
    try:
        for statement in (update(LineageEdge).values(relation="x"), delete(LineageEdge)):
            with pytest.raises(PermissionDenied) as refused:
                session.execute(statement)
            assert refused.value.message == "query without a tenant scope refused"
    finally:
        session.close()
    assert _srcs(db) == [("b", "used_by")]


def test_a_scope_of_several_projects_and_aliases_are_filtered_too(db: Database) -> None:
    a, b = _two_projects(db)
    with db.session(Scope.everything()) as s:
        c = Project(name="c")
        s.add(c)
        s.flush()
        s.add(
            LineageEdge(
                project_id=c.id,
                src_kind="blob",
                src_id="c",
                relation="r",
                dst_kind="run",
                dst_id="1",
            )
        )
    with db.session(Scope.projects(b, a)) as s:
        assert sorted(s.scalars(select(LineageEdge.src_id)).all()) == ["a", "b"]
        edge = aliased(LineageEdge)
        assert s.scalars(select(edge.src_id).where(edge.project_id == c.id)).all() == []
    assert Scope.projects(a).allows(a) and not Scope.projects(a).allows(b)
    assert Scope.everything().allows(b) and Scope.everything().project_ids is None


def test_skip_scope_is_the_only_way_past_the_filter(db: Database) -> None:
    a, _b = _two_projects(db)
    with db.session(Scope.projects(a)) as s:
        query = select(LineageEdge.src_id).execution_options(skip_scope=True)
        assert sorted(s.scalars(query).all()) == ["a", "b"]
        query = select(LineageEdge.src_id).execution_options(skip_scope=False)
        assert s.scalars(query).all() == ["a"]


def test_changing_or_deleting_another_projects_row_is_refused(db: Database) -> None:
    a, b = _two_projects(db)
    for change in ("update", "delete"):
        with pytest.raises(PermissionDenied) as refused, db.session(Scope.projects(a)) as s:
            query = select(LineageEdge).where(LineageEdge.project_id == b)
            theirs = s.scalars(query.execution_options(skip_scope=True)).one()
            if change == "update":
                theirs.relation = "mine now"
            else:
                s.delete(theirs)
            s.flush()
        assert refused.value.message == "write outside the session's project scope refused"
    assert _srcs(db) == [("a", "used_by"), ("b", "used_by")]
    with db.session(Scope.projects(a)) as s:  # its own rows it may change
        mine = s.scalars(select(LineageEdge)).one()
        mine.relation = "derived"
    assert _srcs(db) == [("a", "derived"), ("b", "used_by")]


def test_unscoped_rows_need_no_scope_to_be_written(db: Database) -> None:
    session = db._sessions()
    try:
        session.add(Project(name="solo"))
        session.flush()  # projects are not project-scoped rows: no scope needed
        session.rollback()
    finally:
        session.close()


# -- the SQLite connection settings --------------------------------------------------------------


def test_sqlite_connections_use_wal_foreign_keys_and_the_busy_timeout(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'u.db'}", busy_timeout_s=2.5)
    try:
        assert db.is_sqlite
        with db.engine.connect() as conn:
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")
            }
        assert pragma == {
            "journal_mode": "wal",
            "foreign_keys": 1,
            "synchronous": 1,
            "busy_timeout": 2500,
        }
    finally:
        db.dispose()
    default = Database(f"sqlite:///{tmp_path / 'u.db'}")
    try:
        with default.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        default.dispose()


def test_a_sqlite_transaction_takes_the_write_lock_when_it_begins(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'u.db'}"
    first, second = Database(url), Database(url, busy_timeout_s=0.05)
    try:
        first.migrate()
        with first.session(Scope.everything()) as s:
            s.scalars(select(Project)).all()  # a read: BEGIN IMMEDIATE already holds the lock
            with (
                pytest.raises(OperationalError, match="database is locked"),
                second.session(Scope.everything()) as other,
            ):
                other.scalars(select(Project)).all()
    finally:
        first.dispose()
        second.dispose()


def test_a_read_session_sees_one_snapshot_and_holds_up_no_writer(db: Database) -> None:
    """The scheduler reads its snapshot in a read session: a write commits while it is open
    (on SQLite without waiting: this writer gives up on a held lock after 50 ms), and the
    read keeps seeing the database as it was when it began."""
    _two_projects(db)
    writer = Database(db.url, busy_timeout_s=0.05)
    names = select(Project.name).order_by(Project.name)
    try:
        with db.read_session(Scope.everything()) as r:
            assert r.scalars(names).all() == ["a", "b"]
            with writer.session(Scope.everything()) as w:
                w.add(Project(name="c"))
            assert r.scalars(names).all() == ["a", "b"]
        with db.read_session(Scope.everything()) as r:
            assert r.scalars(names).all() == ["a", "b", "c"]
    finally:
        writer.dispose()


def test_a_read_session_refuses_to_write(db: Database) -> None:
    with (
        pytest.raises(PermissionDenied, match="a write in a read-only session refused"),
        db.read_session(Scope.everything()) as r,
    ):
        r.add(Project(name="x"))
    with db.session(Scope.everything()) as s:
        assert s.scalars(select(Project.name)).all() == []


def test_the_migration_lock_file_sits_beside_the_database_or_in_lock_dir(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'data' / 'u.db'}")
    (tmp_path / "data").mkdir()
    try:
        db.migrate()
        assert (tmp_path / "data" / ".migrate.lock").exists()
        db.migrate(lock_dir=tmp_path / "locks")
        assert (tmp_path / "locks" / ".migrate.lock").exists()
    finally:
        db.dispose()


def test_ping_says_when_the_database_is_unreachable(tmp_path: Path) -> None:
    from underlay.errors import Unavailable

    db = Database(f"sqlite:///{tmp_path / 'missing' / 'u.db'}")
    try:
        with pytest.raises(Unavailable) as down:
            db.ping()
        assert down.value.message == "metadata database unreachable: OperationalError"
    finally:
        db.dispose()
    ok = Database(f"sqlite:///{tmp_path / 'u.db'}")
    try:
        ok.ping()
    finally:
        ok.dispose()


def test_a_sqlite_database_serves_sessions_from_any_thread(tmp_path: Path) -> None:
    import threading

    db = Database(f"sqlite:///{tmp_path / 'u.db'}")
    try:
        db.migrate()
        with db.session(Scope.everything()) as s:  # a pooled connection made on this thread
            s.add(Project(name="a"))
        names: list[str] = []

        def read() -> None:
            with db.session(Scope.everything()) as s:
                names.extend(s.scalars(select(Project.name)).all())

        worker = threading.Thread(target=read)
        worker.start()
        worker.join()
        assert names == ["a"]
    finally:
        db.dispose()


@pytest.mark.postgres
def test_a_postgresql_connection_the_server_dropped_is_replaced(pg_url: str) -> None:
    db = Database(pg_url, pool_size=1)
    try:
        assert db.engine.pool.size() == 1  # type: ignore[attr-defined]
        with db.engine.connect() as conn:  # the pool's only connection
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == pid  # pooled
        admin = Database(pg_url)
        try:
            assert admin.engine.pool.size() == 5  # type: ignore[attr-defined]  # the default
            with admin.engine.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                conn.commit()
        finally:
            admin.dispose()
        db.ping()  # the pool notices the dead connection and opens another
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    finally:
        db.dispose()
