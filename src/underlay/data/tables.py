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
3. the table's quality checks (:mod:`underlay.data.quality`) run over the new version;
4. a short transaction records the version (operation, rows written and quarantined, the
   quality report) and publishes it — unless a blocking check failed: then the version is
   recorded as ``rejected``, never published, and the Delta table is restored at once to
   the published version (emptied, when there is none yet), so readers inside and outside
   the platform stay on the last good version.

A write to a table with no published version yet replaces whatever its folder holds (the
leftover of a crashed or rejected first write), so version numbers keep counting up.

A write whose columns differ from the table's (a missing or extra column, another type) is
refused before anything is written, unless the caller asks for schema evolution.

An object store that cannot be reached (delta-rs reports it as an ``OSError`` once its own
retries are spent) is :class:`~underlay.errors.Unavailable`: the write stops before its
version is recorded or published, so readers stay on the published version, and the next
write undoes a Delta commit that was made but not recorded (step 1).

On an object store (``s3://``) delta-rs commits a version by writing its log entry with a
conditional put (``If-None-Match: *``), so two writers can never both create one version; the
files of a deleted table are removed through delta-rs's own object store (no s3fs needed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as pads
from sqlalchemy import delete, exc, select
from sqlalchemy.orm import Session

from underlay.audit import AuditLog
from underlay.config import Settings
from underlay.data import quality, subjects
from underlay.data.models import DataTable, DataTableVersion
from underlay.data.privacy import IngestMasker
from underlay.errors import InvalidInput, NotFound, Unavailable, UnderlayError
from underlay.identity import SYSTEM
from underlay.store import Database, Scope
from underlay.store.models import Project

Mode = Literal["append", "overwrite", "merge"]
_CONDITIONAL_PUT = ("aws_conditional_put", "conditional_put")
QUARANTINE_SUFFIX = "_quarantine"
DATASET_CACHE = 64  # published versions whose opened Delta log a server keeps
_LEASE_SUFFIX = ".first"  # <table id>.first: the first-write lease of a new table
_LEASE_TEMP = ".first-"  # a lease being made, before its rename
# how object_store (under delta-rs) words a store that failed, as opposed to refused data:
# "Generic S3 error: Error performing PUT ... after 2 retries ... HTTP error: error sending request"
_STORE_FAILURE = re.compile(r"Generic \w+ error|error sending request|after \d+ retries")


@dataclass(frozen=True)
class WriteResult:
    table: str
    version: int
    operation: str
    rows_written: int
    rows_quarantined: int
    num_rows: int
    pii: dict[str, Any] | None = None
    published: bool = True
    quality: dict[str, Any] | None = None


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
        self.data_settings = settings.data
        self._thread_locks: dict[str, threading.Lock] = {}
        self._datasets: OrderedDict[tuple[str, int], pads.Dataset] = OrderedDict()
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
        self,
        session: Session,
        project_id: int,
        name: str,
        created_by: int | None = None,
        *,
        lease: contextlib.ExitStack | None = None,
    ) -> DataTable:
        """The table ``name``, created (empty, no version yet) on first use.

        A write passes ``lease``: a table it creates gets a first-write lease in that stack,
        taken before the new row commits (see :meth:`first_write_lease`)."""
        found = self.get(session, project_id, name, missing_ok=True)
        if found is not None:
            return found
        table = DataTable(project_id=project_id, name=name, created_by=created_by)
        try:
            with session.begin_nested():
                session.add(table)
        except exc.IntegrityError:  # created meanwhile by another writer
            return self.get(session, project_id, name)  # type: ignore[return-value]
        if lease is not None:
            lease.enter_context(self.first_write_lease(project_id, table.id))
        return table

    @contextlib.contextmanager
    def first_write_lease(self, project_id: int, table_id: int) -> Iterator[None]:
        """Held by the request that created a table for its first write, from before the row
        commits until the write is over: an ``flock``ed ``<table id>.first`` file beside the
        table's write lock, made under a temporary name and renamed, so it is locked from the
        moment it can be seen. The kernel drops the lock when the holder dies (SIGKILL
        included); :meth:`sweep_unfinished` then removes the table if it has no version. The
        file is removed when the block ends normally and left for the sweep when it raises."""
        folder = self._lock_root / str(int(project_id))
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = folder / f"{int(table_id)}{_LEASE_SUFFIX}"
        for _ in range(3):
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=_LEASE_TEMP)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)  # released on close, or on death
                if not os.fstat(handle).st_nlink:
                    continue  # a sweep took it for a dead creator's before we locked it
                Path(temporary).replace(final)
                yield
                final.unlink(missing_ok=True)  # still locked: no sweep acts on a live lease
                return
            finally:
                os.close(handle)
        raise Unavailable("could not create a table's first-write lease file: try again")

    def sweep_unfinished(self, db: Database, audit: AuditLog) -> int:
        """Remove the tables whose first write died with its process (a lease nobody holds,
        the table still without a version); returns how many. Leases a live request holds,
        in this process or another worker, are skipped, so this is safe at any time."""
        removed = 0
        for path in self._lock_root.glob(f"*/{_LEASE_TEMP}*"):
            with contextlib.suppress(FileNotFoundError):
                _remove_unlocked(path)  # a creator killed before it named its lease
        for path in self._lock_root.glob(f"*/*{_LEASE_SUFFIX}"):
            try:
                project_id, table_id = int(path.parent.name), int(path.stem)
                fd = os.open(path, os.O_RDONLY)
            except (ValueError, FileNotFoundError):
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live first write holds it
                if not os.fstat(fd).st_nlink:
                    continue  # its write finished meanwhile
                removed += self._forget_unfinished(db, audit, project_id, table_id)
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return removed

    def _forget_unfinished(
        self, db: Database, audit: AuditLog, project_id: int, table_id: int
    ) -> int:
        with db.session(Scope.everything()) as session:
            table = session.get(DataTable, table_id)
            if table is None or table.project_id != project_id:
                return 0  # the refused write removed it already
            if table.published_version is not None or self.versions(session, table):
                return 0
            project = session.get(Project, project_id)
            project_name = project.name if project is not None else str(project_id)
            audit.append(
                session,
                actor=SYSTEM.name,
                action="table.delete",
                resource=f"project:{project_name}/table:{table.name}",
                project=project_name,
                outcome="ok",
                detail={"reason": "its first write never finished: the server stopped during it"},
            )
            self.remove(session, table)
        return 1

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
        if table.published_version is None and version is None:
            raise NotFound(f"table {table.name!r} has no published data yet")
        if version is None:
            assert table.published_version is not None
            return table.published_version
        row = session.scalar(
            select(DataTableVersion).where(
                DataTableVersion.table_id == table.id, DataTableVersion.version == version
            )
        )
        if row is None:
            raise NotFound(f"table {table.name!r} has no version {version}")
        if row.status == "rejected":
            raise NotFound(
                f"{table.name}@{version} failed its quality checks and was never published "
                "(its report: tables versions)"
            )
        return version

    # -- quality checks (in the caller's transaction) --------------------------------------

    def set_checks(self, session: Session, table: DataTable, spec: quality.CheckSpec) -> None:
        """Store ``spec`` on ``table`` after checking it against the published schema (or,
        before the first write, against that write's data when it comes)."""
        quality.validate(spec, self.schema(table), table.name, self.data_settings)
        table.checks = spec.model_dump_json(exclude_none=True)

    def check(
        self, table: DataTable, version: int, spec: quality.CheckSpec | None = None
    ) -> quality.QualityReport:
        """Evaluate ``spec`` (else the table's checks) on ``version``; nothing is written."""
        if spec is not None:
            quality.validate(spec, self.schema(table), table.name, self.data_settings)
        spec = spec or quality.load(table.checks)
        if spec is None:
            raise InvalidInput(f"table {table.name!r} has no quality checks: declare some")
        return quality.evaluate(spec, self.dataset(table, version), table.name, self.data_settings)

    def remove(self, session: Session, table: DataTable) -> None:
        """Delete the table's rows now and its files once the caller commits."""
        subjects.forget(session, table.id)
        session.execute(delete(DataTableVersion).where(DataTableVersion.table_id == table.id))
        location = self.location(table)
        session.delete(table)
        session.flush()
        from sqlalchemy import event

        def remove_files(_session: Any) -> None:
            self._delete_files(location)

        event.listen(session, "after_commit", remove_files, once=True)

    def purge_project(self, session: Session, project_id: int) -> None:
        """Remove every table of a deleted project: rows now, files once the caller commits
        (the project's folder under the tables root with them)."""
        for table in self.list_tables(session, project_id):
            self.remove(session, table)
        folder = f"{self.root}/{int(project_id)}"
        from sqlalchemy import event

        event.listen(session, "after_commit", lambda _s: self._delete_files(folder), once=True)

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

    def published_dataset(self, table: DataTable, version: int) -> pads.Dataset:
        """As :meth:`dataset`, for a version :meth:`published` gave: such a version's files
        never change (a version number is only reused when none was ever recorded, and table
        ids are never reused), so the last ``DATASET_CACHE`` are kept, saving the 2-5 ms of
        opening the Delta log on every read and query."""
        key = (self.location(table), version)
        with self._guard:
            found = self._datasets.get(key)
            if found is not None:
                self._datasets.move_to_end(key)
                return found
        dataset = self.dataset(table, version)
        with self._guard:
            self._datasets[key] = dataset
            while len(self._datasets) > DATASET_CACHE:
                self._datasets.popitem(last=False)
        return dataset

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
        watermark: str | None = None,
    ) -> WriteResult:
        """Write ``batches`` as the next version, check it, and publish it unless a blocking
        check failed (steps in the module doc).

        ``quarantined`` is read after the batches are consumed (an ingest's count of rows it
        set aside grows while it streams): an object with a ``count``."""
        scope = Scope.projects(project_id)
        sources: list[_Counter] = []
        with self._locked(project_id, table_id), self._store_errors("writing", sources):
            with db.session(scope) as session:
                table = session.get(DataTable, table_id)
                if table is None:
                    raise NotFound("the table was deleted while the write started")
                location, published = self.location(table), table.published_version
                name, checks = table.name, quality.load(table.checks)
                subject_key = table.subject_key
                current = self.schema(table)
                recorded = published is not None or bool(self.versions(session, table))
            self._undo_unpublished(location, published, recorded)
            if masker is not None:  # masking may change types: check what will be stored
                schema, batches = masker.start(batches, current, evolve=evolve)
            if current is not None and not evolve:
                check_schema(current, schema, mode)
            if mode == "merge" and not keys:
                raise InvalidInput("a merge needs key columns (--key)")
            for key in keys:
                if key not in schema.names or (current is not None and key not in current.names):
                    raise InvalidInput(f"key column {key!r} is not in the data and the table")
            if checks is not None and current is None:  # declared before the first write
                quality.validate(checks, schema, name, self.data_settings)
            if subject_key is not None:
                subjects.check_key(schema, subject_key, "the data")
            counter = _Counter(batches)
            sources.append(counter)
            version = self._write_delta(location, published, counter, schema, mode, keys, evolve)
            report = None
            if checks is not None:
                dataset = self._dataset_at(location, version)
                report = quality.evaluate(checks, dataset, name, self.data_settings)
            accepted = report is None or report.passed
            num_rows = self._count(location, version)
            pii = masker.report.to_dict() if masker and masker.report else None
            wrote = self._subjects(location, version, subject_key if accepted else None)
            with db.session(scope) as session:
                table = session.get(DataTable, table_id)
                if table is None:
                    raise NotFound("the table was deleted during the write")
                if accepted:
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
                        pii_report=json.dumps(pii or {}),
                        status="published" if accepted else "rejected",
                        quality_report=json.dumps(report.to_dict() if report else {}),
                        watermark=watermark if accepted else None,
                        created_by=created_by,
                    )
                )
                if subject_key is not None and accepted:
                    subjects.record(session, table, version, wrote)
            if not accepted:
                self._undo_unpublished(location, published)
        return WriteResult(
            name,
            version,
            mode,
            counter.rows,
            getattr(quarantined, "count", 0),
            num_rows,
            pii,
            accepted,
            report.to_dict() if report else None,
        )

    @contextlib.contextmanager
    def _store_errors(self, doing: str, sources: list[_Counter]) -> Iterator[None]:
        """An object store that failed inside the block, raised as Unavailable; the errors
        of the data being written (``sources``) pass through as they are."""
        try:
            yield
        except UnderlayError:
            raise
        except OSError as error:
            if any(source.error is not None for source in sources):
                raise
            raise Unavailable(
                f"the tables' store ({self.root}) failed while {doing}: {error}; nothing was "
                "published: try again once it is reachable"
            ) from error

    def _dataset_at(self, location: str, version: int) -> pads.Dataset:
        from deltalake import DeltaTable

        delta = DeltaTable(location, version=version, storage_options=self.options)
        return delta.to_pyarrow_dataset()

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
            if published is None and self._exists(location):
                # nothing published yet: replace the leftover of a crashed or rejected write
                write_deltalake(
                    location,
                    reader,
                    mode="overwrite",
                    schema_mode="overwrite",
                    storage_options=self.options,
                )
            elif published is None or mode != "merge":
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
        except OSError:
            raise  # the object store failed, not the data: Unavailable (write)
        except DeltaError as error:
            if _STORE_FAILURE.search(str(error)):  # delta-rs wraps the store's errors in its own
                raise OSError(str(error)) from error
            raise InvalidInput(f"the table refused the write: {error}") from None
        except pa.ArrowException as error:
            raise InvalidInput(f"the data does not fit the table: {error}") from None
        return DeltaTable(location, storage_options=self.options).version()

    def set_subject_key(
        self, db: Database, project_id: int, table_id: int, column: str | None
    ) -> int:
        """Declare (or, with None, drop) the table's subject key and index every published
        version by it, under the table's write lock; returns the subjects indexed."""
        scope = Scope.projects(project_id)
        with self._locked(project_id, table_id), db.session(scope) as session:
            table = session.get(DataTable, table_id)
            if table is None:
                raise NotFound("the table was deleted meanwhile")
            if column is None:
                table.subject_key = None
                subjects.forget(session, table_id)
                return 0
            subjects.check_key(self.schema(table), column)
            table.subject_key = column
            if table.published_version is None:
                return 0
            return subjects.backfill(session, table, self.location(table), self.options)

    def _exists(self, location: str) -> bool:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            DeltaTable(location, storage_options=self.options)
        except TableNotFoundError:
            return False
        return True

    def _undo_unpublished(
        self, location: str, published: int | None, recorded: bool = True
    ) -> None:
        """Restore the last published version if a crashed or rejected write committed after
        it. With none published yet: when no version was ever recorded (a first write that
        crashed after its commit) delete the leftover files, so the next write is version 0;
        else (a rejected version keeps its number and report) leave the table empty, so
        version numbers keep counting up."""
        from deltalake import DeltaTable, write_deltalake
        from deltalake.exceptions import TableNotFoundError

        try:
            delta = DeltaTable(location, storage_options=self.options)
        except TableNotFoundError:
            return
        if published is None and not recorded:
            self._delete_files(location)
            return
        if published is None:
            dataset = delta.to_pyarrow_dataset()
            if dataset.count_rows():
                empty = dataset.schema.empty_table()
                write_deltalake(location, empty, mode="overwrite", storage_options=self.options)
            return
        if delta.version() > published and not _restored_to(delta, published):
            delta.restore(published)

    def _subjects(self, location: str, version: int, column: str | None) -> set[str]:
        """The subjects that ``version`` wrote (empty when the table has no subject key)."""
        from deltalake import DeltaTable

        if column is None:
            return set()
        delta = DeltaTable(location, version=version, storage_options=self.options)
        before = None
        if version > 0:
            before = DeltaTable(location, version=version - 1, storage_options=self.options)
        return subjects.written(delta, before, column)

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


def _remove_unlocked(path: Path) -> None:
    """Remove a lease file unless a live process holds it locked."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _restored_to(delta: Any, version: int) -> bool:
    """Whether the latest commit is a restore to ``version`` (so there is nothing to undo)."""
    (last,) = delta.history(1) or [{}]
    parameters = last.get("operationParameters") or {}
    return bool(
        last.get("operation") == "RESTORE" and str(parameters.get("version")) == str(version)
    )


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
