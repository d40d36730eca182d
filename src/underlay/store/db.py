"""Engines, sessions and migrations.

Design decisions:

* **Tenant scope in the query layer.** Every session carries a :class:`Scope`. ORM queries
  of :class:`~underlay.store.models.ProjectScoped` rows get the scope's project filter added
  by a ``do_orm_execute`` hook, and flushes refuse rows outside the scope, so a service cannot
  return or write another project's rows by forgetting a filter. A session without a scope
  refuses scoped queries (fail closed).
* **SQLite writers are serialised up front.** Every SQLite transaction starts with
  ``BEGIN IMMEDIATE`` (WAL mode keeps readers unblocked), so a read-then-write transaction
  never fails half-way with "database is locked"; several processes wait on ``busy_timeout``.
* **Reads that need no lock.** :meth:`Database.read_session` is a read-only transaction over
  one consistent snapshot: on SQLite a deferred ``BEGIN`` (WAL: it neither takes nor waits
  for the write lock), on PostgreSQL ``REPEATABLE READ READ ONLY``. A long read (the
  scheduler's snapshot of every node and job) then holds up no writer; whatever it decided
  is re-checked by the write that follows.
* **Migrations at start-up.** :meth:`Database.migrate` applies pending Alembic revisions under
  a lock (an advisory lock on PostgreSQL, a file lock on SQLite), so several workers starting
  at once upgrade the schema exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker, with_loader_criteria

from underlay.errors import PermissionDenied, Unavailable
from underlay.store.models import ProjectScoped

MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATION_LOCK_ID = 0x756E646C  # "undl": PostgreSQL advisory lock key
_ALEMBIC = threading.Lock()  # see Database.migrate
_READ_ONLY = "underlay_read_only"  # an execution option, and a key of a session's ``info``


@dataclass(frozen=True)
class Scope:
    """Which projects a session may see: all of them, or a fixed set of project ids."""

    project_ids: frozenset[int] | None  # None means every project

    @classmethod
    def everything(cls) -> Scope:
        return cls(None)

    @classmethod
    def projects(cls, *ids: int) -> Scope:
        return cls(frozenset(ids))

    def allows(self, project_id: int) -> bool:
        return self.project_ids is None or project_id in self.project_ids


class Database:
    """One engine and its session factory; use :meth:`session` for a unit of work."""

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0, pool_size: int = 5) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        self.engine = self._create_engine(url, busy_timeout_s, pool_size)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self._read_engine(), expire_on_commit=False)
        # copied into every session's ``info``: kernel services a domain function reaches
        # through its session (``"audit"``: the AuditLog, so raising an alert audits it)
        self.session_info: dict[str, Any] = {}

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def _create_engine(self, url: str, busy_timeout_s: float, pool_size: int) -> Engine:
        if self.dialect != "sqlite":
            return create_engine(url, pool_size=pool_size, pool_pre_ping=True)
        engine = create_engine(
            url, connect_args={"timeout": busy_timeout_s, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            read = conn.get_execution_options().get(_READ_ONLY, False)
            conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

        return engine

    def _read_engine(self) -> Engine:
        if self.is_sqlite:
            return self.engine.execution_options(**{_READ_ONLY: True})
        return self.engine.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )

    @contextlib.contextmanager
    def session(self, scope: Scope) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error."""
        session = self._sessions()
        session.info.update(self.session_info)
        session.info["scope"] = scope
        try:
            with session.begin():
                yield session
        finally:
            session.close()

    @contextlib.contextmanager
    def read_session(self, scope: Scope) -> Iterator[Session]:
        """A read-only transaction over one snapshot of the database (see the module
        docstring); a flush of any change in it is refused."""
        session = self._read_sessions()
        session.info.update(self.session_info)
        session.info["scope"] = scope
        session.info[_READ_ONLY] = True
        try:
            with session.begin():
                yield session
        finally:
            session.close()

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # the driver's errors vary; readiness only needs yes/no
            raise Unavailable(f"metadata database unreachable: {type(exc).__name__}") from exc

    # -- migrations ---------------------------------------------------------------------

    def alembic_config(self) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["engine"] = self.engine
        return cfg

    def migrate(self, lock_dir: Path | None = None) -> None:
        """Apply pending migrations; safe to call from several processes at once."""
        from alembic import command

        # alembic keeps its ``context`` and ``op`` in module globals: two threads of one
        # process migrating at once (two servers starting in one test process) would mix
        # their connections, so a process-wide lock comes before the cross-process one
        with _ALEMBIC, self._migration_lock(lock_dir):
            command.upgrade(self.alembic_config(), "head")

    def head_revision(self) -> str | None:
        """The newest migration this code ships."""
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self.alembic_config()).get_current_head()

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @contextlib.contextmanager
    def _migration_lock(self, lock_dir: Path | None) -> Iterator[None]:
        if self.dialect == "postgresql":
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_ID})
                    conn.commit()
            return
        database = make_url(self.url).database
        folder = lock_dir or (Path(database).parent if database else Path.cwd())
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / ".migrate.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def dispose(self) -> None:
        self.engine.dispose()


def _scope_queries(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.execution_options.get("skip_scope"):
        return
    scope: Scope | None = state.session.info.get("scope")
    if scope is None:
        raise PermissionDenied("query without a tenant scope refused")
    if scope.project_ids is None:
        return
    ids = tuple(sorted(scope.project_ids))
    state.statement = state.statement.options(
        with_loader_criteria(
            ProjectScoped,
            lambda cls: cls.project_id.in_(ids),
            include_aliases=True,
        )
    )


def _scope_writes(session: Session, _ctx: Any, _instances: Any) -> None:
    if session.info.get(_READ_ONLY) and (session.new or session.dirty or session.deleted):
        raise PermissionDenied("a write in a read-only session refused")
    scope: Scope | None = session.info.get("scope")
    for obj in list(session.new) + list(session.dirty) + list(session.deleted):
        if isinstance(obj, ProjectScoped) and (scope is None or not scope.allows(obj.project_id)):
            raise PermissionDenied("write outside the session's project scope refused")


# Registered here rather than with decorators: the mutation tester skips decorated functions,
# and these two are the tenant boundary it must check (docs/testing.md).
event.listen(Session, "do_orm_execute", _scope_queries)
event.listen(Session, "before_flush", _scope_writes)
