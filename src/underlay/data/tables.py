"""Tables: structured data as Delta Lake tables, versioned, readable by Spark, DuckDB and
Polars, with the platform deciding which version readers see.

A table's files live under the tables root (``data.tables_url``) at
``<project id>/<table id>``; its metadata row holds ``published_version``, the Delta version
every reader of the platform gets unless it asks for another published one. A write runs
outside any database transaction (a long ingest must not hold SQLite's write lock):

1. under the table's lock (an ``flock``: beside the table on a local root, in the home's
   ``locks/tables`` for an object store root, so every worker process of one server takes
   it), any Delta version newer than the last published one — the leftover of a write that
   crashed after its Delta commit — is undone with a Delta ``restore`` to the published
   version;
2. the batches are written by delta-rs (append, overwrite, or merge by key columns), which
   commits atomically: a crash before the commit leaves unreferenced files, never a half
   version;
3. a short transaction records the version (operation, rows written and quarantined) and
   publishes it.

A write whose columns differ from the table's (a missing or extra column, another type) is
refused before anything is written, unless the caller asks for schema evolution.

On an object store (``s3://``) delta-rs commits a version by writing its log entry with a
conditional put (``If-None-Match: *``), so two writers can never both create one version; the
files of a deleted table are removed through delta-rs's own object store (no s3fs needed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as pads
from sqlalchemy import delete, exc, select
from sqlalchemy.orm import Session

from underlay.config import Settings
from underlay.data.models import DataTable, DataTableVersion
from underlay.data.privacy import IngestMasker
from underlay.errors import InvalidInput, NotFound
from underlay.store import Database, Scope

Mode = Literal["append", "overwrite", "merge"]
_CONDITIONAL_PUT = ("aws_conditional_put", "conditional_put")
QUARANTINE_SUFFIX = "_quarantine"


@dataclass(frozen=True)
class WriteResult:
    table: str
    version: int
    operation: str
    rows_written: int
    rows_quarantined: int
    num_rows: int
    pii: dict[str, Any] | None = None


class TableStore:
    """The Delta tables of every project, under one root (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.tables_url.rstrip("/")
        self.local = "://" not in self.root
        self.options = dict(settings.data.storage_options)
        if self.root.startswith(("s3://", "s3a://")) and not any(
            key.lower() in _CONDITIONAL_PUT for key in self.options
        ):
            # commit a version with a conditional put (If-None-Match): two writers can never
            # both create one log entry (AWS S3, MinIO, R2, moto); stated, not left to defaults
            self.options["aws_conditional_put"] = "etag"
        self.batch_rows = settings.data.batch_rows
        self._thread_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # where the cross-process write locks live: beside the tables on a local root, in the
        # home (shared by the workers of `underlay up --workers N`) for an object store
        self._lock_root = Path(self.root) if self.local else settings.home / "locks" / "tables"
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True, mode=0o700)

    def location(self, table: DataTable) -> str:
        return f"{self.root}/{int(table.project_id)}/{int(table.id)}"

    # -- metadata (in the caller's transaction) ------------------------------------------

    def ensure(
        self, session: Session, project_id: int, name: str, created_by: int | None = None
    ) -> DataTable:
        """The table ``name``, created (empty, no version yet) on first use."""
        found = self.get(session, project_id, name, missing_ok=True)
        if found is not None:
            return found
        table = DataTable(project_id=project_id, name=name, created_by=created_by)
        try:
            with session.begin_nested():
                session.add(table)
        except exc.IntegrityError:  # created meanwhile by another writer
            return self.get(session, project_id, name)  # type: ignore[return-value]
        return table

    def get(
        self, session: Session, project_id: int, name: str, *, missing_ok: bool = False
    ) -> DataTable | None:
        found = session.scalar(
            select(DataTable).where(DataTable.project_id == project_id, DataTable.name == name)
        )
        if found is None and not missing_ok:
            raise NotFound(f"table {name[:80]!r} not found")
        return found

    def read(self, session: Session, project_id: int, name: str) -> DataTable:
        table = self.get(session, project_id, name)
        assert table is not None
        return table

    def list_tables(self, session: Session, project_id: int) -> list[DataTable]:
        query = select(DataTable).where(DataTable.project_id == project_id)
        return list(session.scalars(query.order_by(DataTable.name)))

    def versions(self, session: Session, table: DataTable) -> list[DataTableVersion]:
        query = select(DataTableVersion).where(DataTableVersion.table_id == table.id)
        return list(session.scalars(query.order_by(DataTableVersion.version.desc())))

    def published(self, session: Session, table: DataTable, version: int | None) -> int:
        """The version a reader gets: ``version`` if it was published, else the current one."""
        if table.published_version is None:
            raise NotFound(f"table {table.name!r} has no data yet")
        if version is None:
            return table.published_version
        row = session.scalar(
            select(DataTableVersion).where(
                DataTableVersion.table_id == table.id, DataTableVersion.version == version
            )
        )
        if row is None:
            raise NotFound(f"table {table.name!r} has no version {version}")
        return version

    def remove(self, session: Session, table: DataTable) -> None:
        """Delete the table's rows now and its files once the caller commits."""
        session.execute(delete(DataTableVersion).where(DataTableVersion.table_id == table.id))
        location = self.location(table)
        session.delete(table)
        session.flush()
        from sqlalchemy import event

        def remove_files(_session: Any) -> None:
            self._delete_files(location)

        event.listen(session, "after_commit", remove_files, once=True)

    def _delete_files(self, location: str) -> None:
        """Delete every file under a table's location, on a local root or an object store."""
        if self.local:
            import shutil

            shutil.rmtree(location, ignore_errors=True)
            return
        from deltalake.fs import DeltaStorageHandler

        relative = location[len(self.root) + 1 :]
        DeltaStorageHandler(self.root, self.options).delete_dir(relative)

    # -- data ----------------------------------------------------------------------------

    def dataset(self, table: DataTable, version: int) -> pads.Dataset:
        """The table at ``version`` as a lazy Arrow dataset (nothing read yet)."""
        from deltalake import DeltaTable

        delta = DeltaTable(self.location(table), version=version, storage_options=self.options)
        return delta.to_pyarrow_dataset()

    def schema(self, table: DataTable) -> pa.Schema | None:
        """The published schema (None before the first write)."""
        if table.published_version is None:
            return None
        return self.dataset(table, table.published_version).schema

    def write(
        self,
        db: Database,
        project_id: int,
        table_id: int,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        *,
        mode: Mode = "append",
        keys: tuple[str, ...] = (),
        evolve: bool = False,
        source: str = "",
        quarantined: Any = None,
        created_by: int | None = None,
        masker: IngestMasker | None = None,
    ) -> WriteResult:
        """Write ``batches`` as the next version and publish it (steps in the module doc).

        ``quarantined`` is read after the batches are consumed (an ingest's count of rows it
        set aside grows while it streams): an object with a ``count``."""
        scope = Scope.projects(project_id)
        with self._locked(project_id, table_id):
            with db.session(scope) as session:
                table = session.get(DataTable, table_id)
                if table is None:
                    raise NotFound("the table was deleted while the write started")
                location, published = self.location(table), table.published_version
                name = table.name
                current = self.schema(table)
            self._undo_unpublished(location, published)
            if current is not None and not evolve:
                check_schema(current, schema, mode)
            if mode == "merge" and not keys:
                raise InvalidInput("a merge needs key columns (--key)")
            for key in keys:
                if key not in schema.names or (current is not None and key not in current.names):
                    raise InvalidInput(f"key column {key!r} is not in the data and the table")
            counter = _Counter(masker(batches) if masker is not None else batches)
            version = self._write_delta(location, published, counter, schema, mode, keys, evolve)
            num_rows = self._count(location, version)
            with db.session(scope) as session:
                table = session.get(DataTable, table_id)
                if table is None:
                    raise NotFound("the table was deleted during the write")
                table.published_version = version
                session.add(
                    DataTableVersion(
                        project_id=project_id,
                        table_id=table_id,
                        version=version,
                        operation=mode,
                        rows_written=counter.rows,
                        rows_quarantined=getattr(quarantined, "count", 0),
                        num_rows=num_rows,
                        source=source[:255],
                        pii_report=json.dumps(
                            masker.report.to_dict() if masker and masker.report else {}
                        ),
                        created_by=created_by,
                    )
                )
        report = masker.report.to_dict() if masker and masker.report else None
        return WriteResult(
            name, version, mode, counter.rows, getattr(quarantined, "count", 0), num_rows, report
        )

    def _write_delta(
        self,
        location: str,
        published: int | None,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        mode: Mode,
        keys: tuple[str, ...],
        evolve: bool,
    ) -> int:
        from deltalake import DeltaTable, write_deltalake
        from deltalake.exceptions import DeltaError

        reader = pa.RecordBatchReader.from_batches(schema, iter(batches))
        try:
            if published is None or mode != "merge":
                write_deltalake(
                    location,
                    reader,
                    mode="overwrite" if mode == "overwrite" else "append",
                    schema_mode=("overwrite" if mode == "overwrite" else "merge")
                    if evolve
                    else None,
                    storage_options=self.options,
                )
            else:
                delta = DeltaTable(location, storage_options=self.options)
                predicate = " AND ".join(f't."{k}" = s."{k}"' for k in keys)
                (
                    delta.merge(
                        reader,
                        predicate,
                        source_alias="s",
                        target_alias="t",
                        merge_schema=evolve,
                    )
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .execute()
                )
        except DeltaError as error:
            raise InvalidInput(f"the table refused the write: {error}") from None
        except pa.ArrowException as error:
            raise InvalidInput(f"the data does not fit the table: {error}") from None
        return DeltaTable(location, storage_options=self.options).version()

    def _undo_unpublished(self, location: str, published: int | None) -> None:
        """Restore the last published version if a crashed write committed after it."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            delta = DeltaTable(location, storage_options=self.options)
        except TableNotFoundError:
            return
        if published is None:
            # a first write that crashed after its commit: start again from nothing
            self._delete_files(location)
            return
        if delta.version() > published:
            delta.restore(published)

    def _count(self, location: str, version: int) -> int:
        from deltalake import DeltaTable

        delta = DeltaTable(location, version=version, storage_options=self.options)
        return int(delta.to_pyarrow_dataset().count_rows())

    @contextlib.contextmanager
    def _locked(self, project_id: int, table_id: int) -> Iterator[None]:
        """One writer per table: a thread lock here, an ``flock`` across processes."""
        key = f"{project_id}/{table_id}"
        with self._guard:
            lock = self._thread_locks.setdefault(key, threading.Lock())
        with lock:
            folder = self._lock_root / str(project_id)
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            with (folder / f"{table_id}.lock").open("a") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                yield


def check_schema(table: pa.Schema, data: pa.Schema, mode: Mode) -> None:
    """Refuse data whose columns or types differ from the table's, naming each difference."""
    problems = []
    for column in data:
        if column.name not in table.names:
            problems.append(f"column {column.name!r} is not in the table")
        elif table.field(column.name).type != column.type:
            problems.append(
                f"column {column.name!r} is {table.field(column.name).type} in the table and "
                f"{column.type} in the data"
            )
    problems += [
        f"column {n!r} is missing from the data" for n in table.names if n not in data.names
    ]
    if problems:
        raise InvalidInput(
            "the data does not match the table's schema: "
            + "; ".join(problems)
            + " (nothing was written; evolve the schema to change it)"
        )


class _Counter:
    """Counts the rows of the batches that pass through, and keeps the error that stopped
    them: delta-rs consumes them and would report it wrapped in its own error."""

    def __init__(self, batches: Iterable[pa.RecordBatch]) -> None:
        self._batches = batches
        self.rows = 0
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            for batch in self._batches:
                self.rows += batch.num_rows
                yield batch
        except Exception as error:
            self.error = error
            raise
