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

This module holds the metadata and decides; :mod:`underlay.data.delta` does the Delta work on
a table's files and :mod:`underlay.data.table_locks` holds the write lock and the lease.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
from sqlalchemy import delete, exc, select
from sqlalchemy.orm import Session

from underlay.audit import AuditLog
from underlay.config import Settings
from underlay.data import delta, quality, subjects
from underlay.data.delta import Mode, check_schema
from underlay.data.models import DataTable, DataTableVersion
from underlay.data.privacy import IngestMasker
from underlay.data.table_locks import TableLocks
from underlay.errors import InvalidInput, NotFound, Unavailable, UnderlayError
from underlay.identity import SYSTEM
from underlay.store import Database, Scope
from underlay.store.models import Project

_CONDITIONAL_PUT = ("aws_conditional_put", "conditional_put")
QUARANTINE_SUFFIX = "_quarantine"
DATASET_CACHE = 64  # published versions whose opened Delta log a server keeps


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
        self._datasets: OrderedDict[tuple[str, int], pads.Dataset] = OrderedDict()
        self._guard = threading.Lock()
        # where the cross-process write locks live: beside the tables on a local root, in the
        # home (shared by the workers of `underlay up --workers N`) for an object store
        self.locks = TableLocks(
            Path(self.root) if self.local else settings.home / "locks" / "tables"
        )
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
        taken before the new row commits (see :meth:`TableLocks.first_write_lease`)."""
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
            lease.enter_context(self.locks.first_write_lease(project_id, table.id))
        return table

    def sweep_unfinished(self, db: Database, audit: AuditLog) -> int:
        """Remove the tables whose first write died with its process (a lease nobody holds,
        the table still without a version); returns how many. Leases a live request holds,
        in this process or another worker, are skipped, so this is safe at any time."""
        removed = 0
        for project_id, table_id in self.locks.abandoned():
            removed += self._forget_unfinished(db, audit, project_id, table_id)
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
        delta.delete_files(self.root, location, self.options)

    # -- data ----------------------------------------------------------------------------

    def dataset(self, table: DataTable, version: int) -> pads.Dataset:
        """The table at ``version`` as a lazy Arrow dataset (nothing read yet)."""
        return delta.dataset_at(self.location(table), self.options, version)

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
        with self.locks.locked(project_id, table_id), self._store_errors("writing", sources):
            with db.session(scope) as session:
                table = session.get(DataTable, table_id)
                if table is None:
                    raise NotFound("the table was deleted while the write started")
                location, published = self.location(table), table.published_version
                name, checks = table.name, quality.load(table.checks)
                subject_key = table.subject_key
                current = self.schema(table)
                recorded = published is not None or bool(self.versions(session, table))
            delta.undo_unpublished(self.root, location, self.options, published, recorded)
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
            version = delta.write_version(
                location, self.options, published, counter, schema, mode, keys, evolve
            )
            report = None
            if checks is not None:
                dataset = delta.dataset_at(location, self.options, version)
                report = quality.evaluate(checks, dataset, name, self.data_settings)
            accepted = report is None or report.passed
            num_rows = delta.count(location, self.options, version)
            pii = masker.report.to_dict() if masker and masker.report else None
            column = subject_key if accepted else None
            wrote = delta.written_subjects(location, self.options, version, column)
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
                delta.undo_unpublished(self.root, location, self.options, published, True)
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
            failed = next((s.error for s in sources if s.error is not None), None)
            if failed is not None:  # the data stopped the write, and delta-rs wrapped its error
                raise failed from None
            raise Unavailable(
                f"the tables' store ({self.root}) failed while {doing}: {error}; nothing was "
                "published: try again once it is reachable"
            ) from error

    def set_subject_key(
        self, db: Database, project_id: int, table_id: int, column: str | None
    ) -> int:
        """Declare (or, with None, drop) the table's subject key and index every published
        version by it, under the table's write lock; returns the subjects indexed."""
        scope = Scope.projects(project_id)
        with self.locks.locked(project_id, table_id), db.session(scope) as session:
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
