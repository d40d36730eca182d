"""Delta tables on S3 while the S3 server is SIGKILLed in the middle of a write.

The server is moto as a process of its own (tests.moto_server), killed from inside the stream of
batches being written, so the kill lands while delta-rs is consuming them. A server that stays
down fails the write as Unavailable with nothing recorded or published; one that comes back
while the batches still flow gets the whole version. moto comes back empty (it holds its
objects in memory), so these tests start from a table's first write; its bucket is made again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from tests.data.conftest import BUCKET, s3_tables_config
from tests.moto_server import MotoProcess
from underlay.config import Settings, ensure_home
from underlay.data.tables import TableStore
from underlay.errors import Unavailable
from underlay.store import Database, Scope
from underlay.store.models import Project

pytestmark = [pytest.mark.s3, pytest.mark.slow]

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])
BATCHES, ROWS = 4, 5000  # rows per batch


@dataclass
class World:
    store: TableStore
    db: Database
    project: int
    table: int

    def versions(self) -> list[tuple[int, str]]:
        with self.db.session(Scope.projects(self.project)) as session:
            table = self.store.read(session, self.project, "events")
            return [(v.version, v.status) for v in self.store.versions(session, table)]

    def ids(self, version: int) -> list[int]:
        with self.db.session(Scope.projects(self.project)) as session:
            table = self.store.read(session, self.project, "events")
            dataset = self.store.dataset(table, version)
        return sorted(dataset.to_table(columns=["id"]).column("id").to_pylist())

    def published(self) -> int | None:
        with self.db.session(Scope.projects(self.project)) as session:
            return self.store.read(session, self.project, "events").published_version


@pytest.fixture
def moto() -> Iterator[MotoProcess]:
    server = MotoProcess().start(BUCKET)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def _world(tmp_path: Path, endpoint: str) -> Iterator[World]:
    data = s3_tables_config(endpoint)
    # delta-rs retries a refused connection for minutes by default: a few seconds here
    data["storage_options"] |= {"max_retries": "2", "retry_timeout": "5s"}
    settings = Settings(home=tmp_path / "home", data=data)
    ensure_home(settings)
    db = Database(settings.database_url)
    db.migrate(lock_dir=settings.home)
    store = TableStore(settings)
    try:
        with db.session(Scope.everything()) as session:
            project = Project(name="shop")
            session.add(project)
            session.flush()
            table = store.ensure(session, project.id, "events")
            ids = (project.id, table.id)
        yield World(store, db, *ids)
    finally:
        db.dispose()


def _batch(i: int) -> pa.RecordBatch:
    ids = list(range(i * ROWS, (i + 1) * ROWS))
    return pa.record_batch([pa.array(ids), pa.array([f"n{k}" for k in ids])], schema=SCHEMA)


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_a_write_whose_s3_server_was_killed_is_unavailable_and_publishes_nothing(
    tmp_path: Path, moto: MotoProcess
) -> None:
    def batches() -> Iterator[pa.RecordBatch]:
        for i in range(BATCHES):
            if i == 2:
                moto.kill()
            yield _batch(i)

    with _world(tmp_path, moto.endpoint) as world:
        before = _files(tmp_path)
        with pytest.raises(Unavailable, match=r"the tables' store \(s3://.*\) failed while"):
            world.store.write(world.db, world.project, world.table, batches(), SCHEMA)
        assert world.versions() == [] and world.published() is None
        assert _files(tmp_path) - before <= {p for p in _files(tmp_path) if p.suffix == ".lock"}
        moto.start(BUCKET)
        # the same store, untouched since, writes the table's first version
        result = world.store.write(
            world.db, world.project, world.table, (_batch(i) for i in range(BATCHES)), SCHEMA
        )
        assert (result.version, result.num_rows, result.published) == (0, BATCHES * ROWS, True)
        assert world.versions() == [(0, "published")]
        assert world.ids(0) == list(range(BATCHES * ROWS))


def test_a_write_whose_s3_server_came_back_mid_stream_is_whole(
    tmp_path: Path, moto: MotoProcess
) -> None:
    def batches() -> Iterator[pa.RecordBatch]:
        for i in range(BATCHES):
            if i == 2:
                moto.kill()
                moto.start(BUCKET)
            yield _batch(i)

    with _world(tmp_path, moto.endpoint) as world:
        result = world.store.write(world.db, world.project, world.table, batches(), SCHEMA)
        assert (result.version, result.num_rows, result.published) == (0, BATCHES * ROWS, True)
        assert world.versions() == [(0, "published")]
        assert world.ids(0) == list(range(BATCHES * ROWS))
