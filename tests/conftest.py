"""Shared fixtures. The store fixtures run each contract test on SQLite and on PostgreSQL.

PostgreSQL tests use a fresh database per test session (created and dropped here), so runs
never see each other's rows. Set ``UNDERLAY_TEST_PG`` to point at another server.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from underlay.config import Settings, ensure_home
from underlay.store import Database, Scope
from underlay.store.models import Project

PG_ADMIN_URL = os.environ.get(
    "UNDERLAY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Take everything imported during collection out of the garbage collector's sight.

    Hundreds of thousands of long-lived objects (modules, classes, compiled schemas) would
    otherwise be traversed in every full collection for the rest of the session."""
    import gc

    _import_anyio_whole()
    gc.collect()
    gc.freeze()


def _import_anyio_whole() -> None:
    """Import every lazily imported name of anyio now, while the session has one thread.

    anyio's packages parse their own source into an AST when first imported (to build their
    lazy-import maps), and a server thread could do that in the middle of a test while the
    test's thread parses source too (hypothesis reading a lambda, pytest rewriting a module):
    CPython 3.11 keeps the AST builder's recursion counter per interpreter, and the two can
    trip ``SystemError: AST constructor recursion depth mismatch`` (see tests/api/fuzzing.py).
    """
    import anyio
    import anyio.abc

    for module in (anyio, anyio.abc):
        for name in dir(module):
            getattr(module, name)


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
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@dataclass(frozen=True)
class _Migrated:
    """A PostgreSQL test database right after migrating an empty schema to head: its tables,
    its revision, and the rows the migrations themselves wrote (the audit chain's head)."""

    tables: frozenset[str]
    revision: str
    seeded: dict[str, tuple[list[str], list[tuple[Any, ...]]]]


_migrated: dict[str, _Migrated] = {}


def _reset_pg(url: str) -> None:
    """Leave the database at ``url`` with the schema at head and no rows of its own (as the
    SQLite template gives). Cheap when the database holds exactly the migrated tables at head:
    their rows are deleted, their sequences restarted and the migrations' own rows put back,
    in one round trip (~30 ms, against ~1.2 s for dropping the schema and migrating again,
    and ~0.5 s for a TRUNCATE of every table). Anything else (a test that downgraded, or made
    a table of its own) gets the schema dropped and migrated afresh."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            known = _migrated.get(url)
            if known is not None and _pg_state(conn) == (known.tables, known.revision):
                try:
                    _empty_pg(conn, known)
                    return
                except DBAPIError:  # e.g. a role that may not turn triggers off: reset fully
                    conn.rollback()
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        database = Database(url)
        try:
            with tempfile.TemporaryDirectory() as lock_dir:
                database.migrate(lock_dir=Path(lock_dir))
        finally:
            database.dispose()
        with engine.connect() as conn:
            tables, revision = _pg_state(conn)
            seeded = {}
            for table in sorted(tables - {"alembic_version"}):
                result = conn.execute(text(f'SELECT * FROM "{table}"'))
                rows = [tuple(row) for row in result]
                if rows:
                    seeded[table] = (list(result.keys()), rows)
            _migrated[url] = _Migrated(tables, revision, seeded)
    finally:
        engine.dispose()


def _pg_state(conn: Any) -> tuple[frozenset[str], str]:
    tables = frozenset(
        conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars()
    )
    if "alembic_version" not in tables:
        return tables, ""
    return tables, conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()


def _empty_pg(conn: Any, known: _Migrated) -> None:
    """Delete every row (foreign-key triggers off for this session, so in any order),
    restart every sequence, and put back what the migrations wrote."""
    tables = sorted(known.tables - {"alembic_version"})
    statements = ["SET session_replication_role = replica"]
    statements += [f'DELETE FROM "{table}"' for table in tables]
    statements.append(
        "SELECT setval(c.oid::regclass, 1, false) FROM pg_class c "
        "WHERE c.relkind = 'S' AND c.relnamespace = 'public'::regnamespace"
    )
    statements.append("RESET session_replication_role")
    conn.exec_driver_sql(";\n".join(statements))  # one round trip, one implicit transaction
    for table, (columns, rows) in known.seeded.items():
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join(f":{c}" for c in columns)
        conn.execute(
            text(f'INSERT INTO "{table}" ({names}) VALUES ({marks})'),
            [dict(zip(columns, row, strict=True)) for row in rows],
        )


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once per test session, copied for each test that needs one.

    Running the migrations takes ~0.5 s; a copy takes a millisecond, and the platform's own
    start-up migration then finds the schema at head, exactly as after a fresh migration.
    """
    path = tmp_path_factory.mktemp("sqlite-template") / "underlay.db"
    database = Database(f"sqlite:///{path}")
    database.migrate(lock_dir=path.parent)
    database.dispose()
    return path


def sqlite_url(template: Path, tmp_path: Path) -> str:
    """A fresh copy of the migrated template in ``tmp_path`` (mode 0644, as the umask makes
    files: the platform must still tighten it)."""
    target = tmp_path / "underlay.db"
    shutil.copyfile(template, target)
    target.chmod(0o644)
    return f"sqlite:///{target}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """The URL of a metadata database with the schema at head and no rows of its own, once per
    backend."""
    if request.param == "sqlite":
        return sqlite_url(sqlite_template, tmp_path)
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


def add_project(db: Database, name: str) -> int:
    """A bare project row (no members, no keys) for store-level tests; returns its id."""
    with db.session(Scope.everything()) as s:
        project = Project(name=name)
        s.add(project)
        s.flush()
        return project.id


ADMIN_TOKEN = "ul_test-admin-token-" + "x" * 32


_PORTS_LOW, _PORTS_HIGH = 10_000, 30_000  # below the kernel's ephemeral range (32768 and up)
_next_port: list[int] = []


def free_port() -> int:
    """A port free on 127.0.0.1 that no other pytest worker will hand out.

    The kernel's "bind to port 0" can give two workers the same port between one closing its
    probe and its server binding it; instead each worker walks its own slice of ports below
    the ephemeral range, in order (so a port comes back only after thousands of others), and
    skips any port that is taken."""
    import random
    import socket

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = (_PORTS_HIGH - _PORTS_LOW) // max(count, 1)
    low = _PORTS_LOW + int(worker or 0) % max(count, 1) * size
    if not _next_port:
        _next_port.append(low + random.randrange(size))
    for _ in range(size):
        port = low + (_next_port[0] - low) % size
        _next_port[0] = port + 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{low + size - 1}")


class LiveServer:
    """The real app served by uvicorn on 127.0.0.1 in a thread of the test process."""

    def __init__(self, settings: Settings) -> None:
        import threading

        import uvicorn

        from underlay.api.app import create_app
        from underlay.api.server import uvicorn_options
        from underlay.platform import Platform

        self.settings = settings
        self.port = free_port()
        settings.server.port = self.port  # the local agent and jobs reach the server here
        self.platform = Platform(settings)
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = ADMIN_TOKEN
        self.app = create_app(self.platform)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            **uvicorn_options(settings),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> LiveServer:
        import time

        self._thread.start()
        deadline = time.monotonic() + 60  # a loaded CI machine can take long to start a server
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self.platform.close()

    def client(self, token: str | None = ADMIN_TOKEN):  # type: ignore[no-untyped-def]
        from underlay.client import Client

        return Client(self.url, token)


@pytest.fixture
def server(settings: Settings) -> Iterator[LiveServer]:
    """A live server on the backend under test, with a known admin token."""
    settings.admin_token = ADMIN_TOKEN
    live = LiveServer(settings).start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
def admin(server: LiveServer):  # type: ignore[no-untyped-def]
    with server.client() as c:
        yield c
