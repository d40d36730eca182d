"""Data subjects: which table versions hold the rows about one person (or customer, or
device), so that "every row about subject X, in every version" is one query.

A table may declare a **subject key** column. Each published version then records, in
``data_table_subjects`` (indexed on project and subject), the distinct key values of the
Parquet files that the version added — the rows it wrote, as stored: when the column is
tokenised by the PII masking, the token. Reading only the key column of the new files costs
one columnar pass over what was just written and holds one set of distinct values; it needs
nothing from the write itself, so setting a key on an existing table backfills every
version the same way.

A lookup takes the raw value, adds the token the project's key gives it (as the masking on
ingest would compute it), finds the versions in the index, and reads the rows of each from
Delta with the key filter pushed down into the Arrow dataset scan.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from sqlalchemy import Table, delete, insert, select
from sqlalchemy.orm import Session

from underlay.data.models import DataTable, DataTableSubject, DataTableVersion
from underlay.errors import InvalidInput

MAX_SUBJECT = 255  # longer values are indexed by their SHA-256
MAX_ROWS = 1000  # rows returned per table version
_INSERT_CHUNK = 10_000


def subject_text(value: str) -> str:
    """A key value as the index holds it: its text, or ``sha256:<hex>`` when too long."""
    if len(value) <= MAX_SUBJECT:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def check_key(schema: pa.Schema | None, column: str, of: str = "the table") -> None:
    """Refuse a subject key that the columns lack (``of`` the table or the data), naming the
    ones there are, or whose type cannot key a subject."""
    if schema is None:
        return
    if column not in schema.names:
        raise InvalidInput(
            f"subject key {column!r} is not a column of {of} "
            f"(its columns: {', '.join(schema.names)}; nothing was written)"
        )
    kind = schema.field(column).type
    if pa.types.is_nested(kind) or pa.types.is_floating(kind):
        raise InvalidInput(f"subject key {column!r} is {kind}: a key must be text, integer or date")


def written(delta: Any, before: Any | None, column: str) -> set[str]:
    """The distinct ``column`` values in the files of version ``delta`` that ``before`` (the
    previous Delta version, or None) did not have: what the version wrote. Both are
    ``deltalake.DeltaTable`` objects."""
    dataset = delta.to_pyarrow_dataset()
    old = set()
    if before is not None:
        old = {f.path for f in before.to_pyarrow_dataset().get_fragments()}
    subjects: set[str] = set()
    for fragment in dataset.get_fragments():
        if fragment.path in old:
            continue
        for batch in fragment.to_batches(schema=dataset.schema, columns=[column]):
            values = pc.unique(pc.drop_null(batch.column(0)))
            subjects.update(subject_text(v) for v in values.cast(pa.string()).to_pylist())
    return subjects


def record(session: Session, table: DataTable, version: int, subjects: set[str]) -> None:
    """Index the subjects a version wrote (bulk inserts, in the caller's transaction)."""
    rows = [
        {"project_id": table.project_id, "table_id": table.id, "version": version, "subject": s}
        for s in sorted(subjects)
    ]
    # Core executemany on the session's connection: the ORM's bulk path costs 3x more here
    connection = session.connection()
    statement = insert(cast(Table, DataTableSubject.__table__))
    for start in range(0, len(rows), _INSERT_CHUNK):
        connection.execute(statement, rows[start : start + _INSERT_CHUNK])


def forget(session: Session, table_id: int) -> None:
    session.execute(delete(DataTableSubject).where(DataTableSubject.table_id == table_id))


def backfill(session: Session, table: DataTable, location: str, options: dict[str, str]) -> int:
    """Index every published version of ``table`` by its subject key; the subjects found."""
    from deltalake import DeltaTable

    forget(session, table.id)
    assert table.subject_key is not None
    numbers = session.scalars(
        select(DataTableVersion.version).where(DataTableVersion.table_id == table.id)
    )
    found = 0
    for number in sorted(numbers):
        delta = DeltaTable(location, version=number, storage_options=options)
        before = (
            DeltaTable(location, version=number - 1, storage_options=options) if number else None
        )
        subjects = written(delta, before, table.subject_key)
        record(session, table, number, subjects)
        found += len(subjects)
    return found


# -- lookup ----------------------------------------------------------------------------------


@dataclass
class VersionRows:
    version: int
    operation: str
    rows: list[dict[str, Any]]
    truncated: bool


@dataclass
class TableHits:
    table: str
    column: str
    stored_as: str  # "raw" or "token"
    published_version: int | None
    in_published: bool
    versions: list[VersionRows] = field(default_factory=list)


def candidates(value: str, column: str, key: bytes) -> dict[str, tuple[str, str]]:
    """The forms of ``value`` a table may hold, as index text -> (how, the value as stored):
    the raw value, and the token the masking on ingest gives it under the project's key."""
    from underlay.data.pii.masking import PolicyKind, mask_value

    found = {subject_text(value): ("raw", value)}
    masked = mask_value(value, PolicyKind.TOKENIZE, column, key)
    if masked != value:
        found[subject_text(masked)] = ("token", masked)
    return found


def lookup(
    session: Session,
    project_id: int,
    value: str,
    key: bytes,
    dataset: Any,
) -> list[TableHits]:
    """Every table of the project with a subject key that holds ``value``: the versions that
    wrote it and their rows. ``dataset(table, version)`` opens a version (lazily)."""
    tables = session.scalars(
        select(DataTable)
        .where(DataTable.project_id == project_id, DataTable.subject_key.is_not(None))
        .order_by(DataTable.name)
    ).all()
    forms = {t.id: candidates(value, t.subject_key or "", key) for t in tables}
    wanted = {text for f in forms.values() for text in f}
    hits = session.execute(
        select(DataTableSubject.table_id, DataTableSubject.version, DataTableSubject.subject)
        .where(DataTableSubject.project_id == project_id, DataTableSubject.subject.in_(wanted))
        .order_by(DataTableSubject.table_id, DataTableSubject.version)
    ).all()
    operations = _operations(session, {h.table_id for h in hits})
    result = []
    for table in tables:
        mine = [h for h in hits if h.table_id == table.id and h.subject in forms[table.id]]
        if not mine:
            continue
        how, stored = forms[table.id][mine[-1].subject]
        column = table.subject_key or ""
        entry = TableHits(table.name, column, how, table.published_version, False)
        for hit in mine:
            actual = forms[table.id][hit.subject][1]
            rows, truncated = _rows(dataset(table, hit.version), column, actual)
            operation = operations.get((table.id, hit.version), "")
            entry.versions.append(VersionRows(hit.version, operation, rows, truncated))
        if table.published_version is not None:
            published = dataset(table, table.published_version)
            entry.in_published = _count(published, column, stored) > 0
        result.append(entry)
    return result


def _operations(session: Session, table_ids: set[int]) -> dict[tuple[int, int], str]:
    rows = session.execute(
        select(
            DataTableVersion.table_id, DataTableVersion.version, DataTableVersion.operation
        ).where(DataTableVersion.table_id.in_(table_ids))
    ).all()
    return {(r.table_id, r.version): r.operation for r in rows}


def _filter(dataset: pads.Dataset, column: str, subject: str) -> Any:
    kind = dataset.schema.field(column).type
    try:
        scalar = pa.scalar(subject, pa.string()).cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return pads.field(column) == scalar


def _rows(dataset: pads.Dataset, column: str, subject: str) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``MAX_ROWS`` rows whose key is ``subject``, the filter pushed into the scan."""
    condition = _filter(dataset, column, subject)
    if condition is None:
        return [], False
    rows: list[dict[str, Any]] = []
    for batch in _batches(dataset, condition):
        rows.extend(batch.to_pylist())
        if len(rows) > MAX_ROWS:
            return _plain(rows[:MAX_ROWS]), True
    return _plain(rows), False


def _batches(dataset: pads.Dataset, condition: Any) -> Iterator[pa.RecordBatch]:
    yield from dataset.scanner(filter=condition, batch_size=MAX_ROWS).to_batches()


def _count(dataset: pads.Dataset, column: str, subject: str) -> int:
    condition = _filter(dataset, column, subject)
    return 0 if condition is None else int(dataset.count_rows(filter=condition))


def _plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as JSON values (dates as ISO text, decimals as numbers, bytes as hex)."""
    from underlay.data.arrowio import json_default

    result: list[dict[str, Any]] = json.loads(json.dumps(rows, default=json_default))
    return result
