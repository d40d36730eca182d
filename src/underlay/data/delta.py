"""A table's Delta Lake files: writing a version, undoing one that was never published,
opening, counting and deleting — functions of a location and its storage options, with no
database and no lock (:mod:`underlay.data.tables` holds both and decides when each runs).

delta-rs is imported inside each function, so importing this module stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as pads

from underlay.data import subjects
from underlay.errors import InvalidInput

Mode = Literal["append", "overwrite", "merge"]
# how object_store (under delta-rs) words a store that failed, as opposed to refused data:
# "Generic S3 error: Error performing PUT ... after 2 retries ... HTTP error: error sending request"
# how object_store words a store's failure ("Generic S3 error: ..."); delta-rs's own
# "Generic DeltaTable error" also wraps errors of the data being written, so it is not one
_STORE_FAILURE = re.compile(
    r"Generic (?!DeltaTable)\w+ error|error sending request|after \d+ retries"
)


def dataset_at(location: str, options: dict[str, str], version: int) -> pads.Dataset:
    """The table at ``version`` as a lazy Arrow dataset (nothing read yet)."""
    from deltalake import DeltaTable

    delta = DeltaTable(location, version=version, storage_options=options)
    return delta.to_pyarrow_dataset()


def count(location: str, options: dict[str, str], version: int) -> int:
    return int(dataset_at(location, options, version).count_rows())


def exists(location: str, options: dict[str, str]) -> bool:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        DeltaTable(location, storage_options=options)
    except TableNotFoundError:
        return False
    return True


def delete_files(root: str, location: str, options: dict[str, str]) -> None:
    """Delete every file under ``location`` (inside ``root``), on a local root or an object
    store."""
    if "://" not in root:
        import shutil

        shutil.rmtree(location, ignore_errors=True)
        return
    from deltalake.fs import DeltaStorageHandler

    relative = location[len(root) + 1 :]
    DeltaStorageHandler(root, options).delete_dir(relative)


def write_version(
    location: str,
    options: dict[str, str],
    published: int | None,
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    mode: Mode,
    keys: tuple[str, ...],
    evolve: bool,
) -> int:
    """Commit ``batches`` as the table's next Delta version and return its number. A store
    that failed raises ``OSError``; data the table refuses raises InvalidInput."""
    from deltalake import DeltaTable, write_deltalake
    from deltalake.exceptions import DeltaError

    reader = pa.RecordBatchReader.from_batches(schema, iter(batches))
    try:
        if published is None and exists(location, options):
            # nothing published yet: replace the leftover of a crashed or rejected write
            write_deltalake(
                location,
                reader,
                mode="overwrite",
                schema_mode="overwrite",
                storage_options=options,
            )
        elif published is None or mode != "merge":
            write_deltalake(
                location,
                reader,
                mode="overwrite" if mode == "overwrite" else "append",
                schema_mode=("overwrite" if mode == "overwrite" else "merge") if evolve else None,
                storage_options=options,
            )
        else:
            delta = DeltaTable(location, storage_options=options)
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
        raise  # the object store failed, not the data: Unavailable (TableStore.write)
    except DeltaError as error:
        if _STORE_FAILURE.search(str(error)):  # delta-rs wraps the store's errors in its own
            raise OSError(str(error)) from error
        raise InvalidInput(f"the table refused the write: {error}") from None
    except pa.ArrowException as error:
        raise InvalidInput(f"the data does not fit the table: {error}") from None
    return DeltaTable(location, storage_options=options).version()


def undo_unpublished(
    root: str, location: str, options: dict[str, str], published: int | None, recorded: bool
) -> None:
    """Restore the last published version if a crashed or rejected write committed after
    it. With none published yet: when no version was ever recorded (a first write that
    crashed after its commit) delete the leftover files, so the next write is version 0;
    else (a rejected version keeps its number and report) leave the table empty, so
    version numbers keep counting up."""
    from deltalake import DeltaTable, write_deltalake
    from deltalake.exceptions import TableNotFoundError

    try:
        delta = DeltaTable(location, storage_options=options)
    except TableNotFoundError:
        return
    if published is None and not recorded:
        delete_files(root, location, options)
        return
    if published is None:
        dataset = delta.to_pyarrow_dataset()
        if dataset.count_rows():
            empty = dataset.schema.empty_table()
            write_deltalake(location, empty, mode="overwrite", storage_options=options)
        return
    if delta.version() > published and not _restored_to(delta, published):
        delta.restore(published)


def _restored_to(delta: Any, version: int) -> bool:
    """Whether the latest commit is a restore to ``version`` (so there is nothing to undo)."""
    (last,) = delta.history(1) or [{}]
    parameters = last.get("operationParameters") or {}
    return bool(
        last.get("operation") == "RESTORE" and str(parameters.get("version")) == str(version)
    )


def written_subjects(
    location: str, options: dict[str, str], version: int, column: str | None
) -> set[str]:
    """The subjects that ``version`` wrote (empty when the table has no subject key)."""
    from deltalake import DeltaTable

    if column is None:
        return set()
    delta = DeltaTable(location, version=version, storage_options=options)
    before = None
    if version > 0:
        before = DeltaTable(location, version=version - 1, storage_options=options)
    return subjects.written(delta, before, column)


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
