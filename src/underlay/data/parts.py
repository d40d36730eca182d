"""A table write in parts: the blocks of a distributed dataset (a Ray Dataset's write tasks, on
any machine of the cluster) uploaded one request each, then committed as ONE new version of
the table, or dropped with nothing left.

The design decision: the parts are staged on the server, not written into the Delta table by
the tasks, so the commit takes the same path as any other write (schema checks, PII masking,
quality gates, the subject index, the audit) and a table is never written around the server.
What runs in parallel is the upload; the commit streams the parts into the table in bounded
memory, one part after the other.

A write is a folder ``<home>/tmp/parts-<id>/`` (``id``: 128 random bits) holding ``owner.json``
(the project, the table and the user who started it) and one ``<index>.arrow`` per part (an
Arrow IPC stream), each written under a temporary name and renamed into place, so a part is
there whole or not at all (a retried task writes its part again). Each part upload holds a
shared ``flock`` on ``owner.json``; a commit or a drop takes it exclusively (waiting for the
uploads under way to end), then renames the folder away, so a part that comes later is refused
and nothing lands in a folder being removed. A commit removes the folder whether its write
succeeded or not: a write is committed once. Folders that nobody committed or dropped (their
driver died) are removed by :func:`sweep` once they have been idle for ``ttl_s``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from underlay.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    import pyarrow as pa

PREFIX = "parts-"
OWNER = "owner.json"
MAX_PARTS = 100_000
TTL_S = 24 * 3600.0
_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Owner:
    """Who a write in parts belongs to: checked by every request that names it."""

    project_id: int
    table: str
    user_id: int | None


@dataclass(frozen=True)
class StagedPart:
    index: int
    rows: int
    bytes: int


def _root(home: Path) -> Path:
    path = home / "tmp"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def start(home: Path, owner: Owner) -> str:
    """A new write in parts for ``owner``; returns its id."""
    write = secrets.token_hex(16)
    folder = _root(home) / f"{PREFIX}{write}"
    folder.mkdir(mode=0o700)
    body = {"project_id": owner.project_id, "table": owner.table, "user_id": owner.user_id}
    (folder / OWNER).write_text(json.dumps(body))
    return write


def _folder(home: Path, write: str, owner: Owner) -> Path:
    """The folder of write ``write``, which must belong to ``owner``'s project and table."""
    gone = NotFound(
        f"table {owner.table!r} has no write in parts {write[:40]!r} under way "
        "(it was committed or dropped, or never started)"
    )
    if not _ID.fullmatch(write):
        raise gone
    folder = _root(home) / f"{PREFIX}{write}"
    try:
        found = json.loads((folder / OWNER).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        raise gone from None
    if found.get("project_id") != owner.project_id or found.get("table") != owner.table:
        raise gone  # another project's (or table's) write is, to this caller, not there
    return folder


@contextlib.contextmanager
def _locked(folder: Path, exclusive: bool, gone: NotFound) -> Iterator[None]:
    try:
        fd = os.open(folder / OWNER, os.O_RDONLY)
    except FileNotFoundError:
        raise gone from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if not (folder / OWNER).exists():  # renamed away by a commit or a drop meanwhile
            raise gone
        yield
    finally:
        os.close(fd)


def stage(home: Path, write: str, owner: Owner, index: int, body: Iterable[bytes]) -> StagedPart:
    """Stage part ``index`` of ``write`` from ``body``, an Arrow IPC stream (replacing a part
    of that index staged before: a task that ran again)."""
    import pyarrow as pa

    if not 0 <= index < MAX_PARTS:
        raise InvalidInput(f"part index {index} must be at least 0 and below {MAX_PARTS}")
    folder = _folder(home, write, owner)
    gone = NotFound(f"the write in parts {write!r} is over: it was committed or dropped")
    with _locked(folder, exclusive=False, gone=gone):
        final = folder / f"{index:06d}.arrow"
        temporary = folder / f".{index:06d}.{secrets.token_hex(4)}.partial"
        try:
            with temporary.open("wb") as out:
                for chunk in body:
                    out.write(chunk)
            try:
                with pa.memory_map(str(temporary)) as source:
                    reader = pa.ipc.open_stream(source)
                    rows = sum(batch.num_rows for batch in reader)
            except (pa.ArrowException, OSError) as error:
                raise InvalidInput(f"part {index} is no Arrow IPC stream: {error}") from None
            size = temporary.stat().st_size
            temporary.replace(final)
        finally:
            temporary.unlink(missing_ok=True)
    return StagedPart(index, rows, size)


@contextlib.contextmanager
def claimed(home: Path, write: str, owner: Owner) -> Iterator[Path]:
    """Take write ``write`` for its commit: the uploads under way end first, later ones are
    refused; yields the folder of its parts, removed on leaving, whatever happened."""
    folder = _folder(home, write, owner)
    gone = NotFound(f"the write in parts {write!r} is over: it was committed or dropped")
    taken = folder.with_name(f"{folder.name}.claimed")
    with _locked(folder, exclusive=True, gone=gone):
        try:
            folder.rename(taken)
        except FileNotFoundError:
            raise gone from None
    try:
        yield taken
    finally:
        shutil.rmtree(taken, ignore_errors=True)


def drop(home: Path, write: str, owner: Owner) -> None:
    """Remove write ``write`` and its parts (the uploads under way end first)."""
    with claimed(home, write, owner):
        pass


def part_files(folder: Path, indices: list[int]) -> list[Path]:
    """The files of parts ``indices``, in that order; every one must have been staged."""
    if not indices:
        raise InvalidInput("a commit names at least one part: nothing was written")
    if len(set(indices)) != len(indices):
        raise InvalidInput("a commit names each part once")
    files = [folder / f"{i:06d}.arrow" for i in indices]
    missing = [i for i, f in zip(indices, files, strict=True) if not f.is_file()]
    if missing:
        raise InvalidInput(
            f"part(s) {', '.join(map(str, missing[:10]))} were never staged: nothing was written"
        )
    return files


def sweep(home: Path, ttl_s: float = TTL_S, now: float | None = None) -> int:
    """Remove the writes in parts idle for ``ttl_s`` (their driver died); returns how many."""
    where = home / "tmp"
    if not where.is_dir():
        return 0
    now = time.time() if now is None else now
    removed = 0
    for folder in where.glob(f"{PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            newest = max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])
            if now - newest >= ttl_s:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    return removed


def open_parts(files: list[Path]) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema the parts share (their schemas unified: a column all null in one part takes
    its type from the others), and their record batches, in order, cast to it."""
    import pyarrow as pa

    def reader(path: Path) -> pa.RecordBatchStreamReader:
        return pa.ipc.open_stream(pa.memory_map(str(path)))

    schemas = [reader(f).schema for f in files]
    try:
        schema = pa.unify_schemas(schemas)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise InvalidInput(f"the parts do not share one schema: {error}") from None
    names = schema.names

    def batches() -> Iterator[pa.RecordBatch]:
        for index, path in enumerate(files):
            for batch in reader(path):
                if batch.schema.equals(schema):
                    yield batch
                    continue
                try:
                    batch = pa.RecordBatch.from_arrays(
                        [
                            batch.column(n) if n in batch.schema.names else pa.nulls(len(batch))
                            for n in names
                        ],
                        names=names,
                    )
                    yield batch.cast(schema)
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
                    raise InvalidInput(f"part {index} does not fit the others: {err}") from None

    return schema, batches()
