"""Signed audit checkpoints kept outside the database, and the loop that takes them on time.

The hash chain and the checkpoints inside the database cannot catch someone who cuts the log,
its checkpoints and its head back together, or wipes them all: what is left is a consistent,
shorter log. So every signed checkpoint is also written somewhere the database cannot reach:

* **A file in the home**, ``audit-checkpoints.jsonl``: one JSON record a line, mode 0600,
  opened ``O_APPEND``, written under an exclusive ``flock`` (several workers write the same
  file without duplicates or interleaving) and fsynced.
* **Optionally a second location**, any fsspec URL prefix (``s3://bucket/audit/``): object
  stores have no append, so each checkpoint is its own object, named by its zero-padded
  sequence number.

Design decisions:

* **Written after the commit, from the database.** A location is brought up to date by
  copying every committed checkpoint newer than the newest one it holds. An external record
  therefore never names an entry that was rolled back, and a failed write (disk full, S3
  down) loses nothing: it is logged and the same records are written at the next checkpoint
  or the next tick of :class:`CheckpointLoop`.
* **Verification compares, it does not trust.** :func:`check_external` takes the records
  whose signatures were already checked and asks the database to agree with each of them:
  the newest must not lie beyond the head (truncation, wipe), each one's entry must have the
  signed hash (rewrite) and the database must still hold the same checkpoint (deletion).
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import fsspec
from sqlalchemy import select

from underlay.store.db import Database, Scope
from underlay.store.models import AuditCheckpoint, AuditEntry

if TYPE_CHECKING:
    from underlay.audit import AuditLog

log = logging.getLogger(__name__)

_KIND = "underlay.audit.checkpoint"
_TAIL_BYTES = 16 * 1024
_QUERY_BATCH = 500
_OBJECT_NAME = re.compile(r"(\d{20})\.json$")


@dataclass(frozen=True)
class ExternalCheckpoint:
    """One signed checkpoint as written outside the database."""

    seq: int
    hash: str
    prev_seq: int
    key_id: str
    at: dt.datetime
    signature: bytes

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": _KIND,
                "seq": self.seq,
                "hash": self.hash,
                "prev_seq": self.prev_seq,
                "key_id": self.key_id,
                "at": self.at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
                "signature": base64.b64encode(self.signature).decode("ascii"),
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> ExternalCheckpoint:
        """Parse one record; ``ValueError`` says what is wrong with it."""
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict) or raw.get("kind") != _KIND:
                raise ValueError("not an underlay audit checkpoint")
            at = dt.datetime.fromisoformat(raw["at"])
            if at.tzinfo is None:
                raise ValueError("its time has no timezone")
            record = cls(
                seq=int(raw["seq"]),
                hash=str(raw["hash"]),
                prev_seq=int(raw["prev_seq"]),
                key_id=str(raw["key_id"]),
                at=at,
                signature=base64.b64decode(raw["signature"], validate=True),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unreadable record ({exc})") from exc
        if record.seq < 1:
            raise ValueError(f"unreadable record (sequence {record.seq})")
        return record

    @property
    def when(self) -> str:
        return self.at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class Readout:
    """What one location holds: its parseable records in seq order and its unreadable ones."""

    location: str
    records: list[ExternalCheckpoint]
    unreadable: list[str]


Fetch = Callable[[int], Iterable[ExternalCheckpoint]]


class CheckpointLocation(Protocol):
    """An append-only place for checkpoints outside the database."""

    name: str

    def append_after(self, fetch: Fetch) -> int:
        """Write ``fetch(newest seq held here)``; returns how many records were written."""
        ...

    def read(self) -> Readout: ...


class FileLocation:
    """An append-only JSON-lines file (the default: ``audit-checkpoints.jsonl`` in the home)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self._lock = threading.Lock()

    def append_after(self, fetch: Fetch) -> int:
        created = not self.path.exists()
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # other workers append to the same file
                records = list(fetch(self._newest_seq(fd)))
                if records:
                    data = "".join(r.to_json() + "\n" for r in records).encode("utf-8")
                    while data:
                        data = data[os.write(fd, data) :]
                    os.fsync(fd)
            finally:
                os.close(fd)  # releases the flock
        if created:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return len(records)

    @staticmethod
    def _newest_seq(fd: int) -> int:
        size = os.fstat(fd).st_size
        for start in (max(0, size - _TAIL_BYTES), 0):
            lines = os.pread(fd, size - start, start).decode("utf-8", "replace").splitlines()
            for line in reversed(lines[1:] if start else lines):
                try:
                    return ExternalCheckpoint.from_json(line).seq
                except ValueError:
                    continue
            if start == 0:
                break
        return 0

    def read(self) -> Readout:
        records: list[ExternalCheckpoint] = []
        unreadable: list[str] = []
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return Readout(self.name, records, unreadable)
        with handle:
            for number, line in enumerate(handle, start=1):
                try:
                    records.append(ExternalCheckpoint.from_json(line.decode("utf-8")))
                except (UnicodeDecodeError, ValueError) as exc:
                    unreadable.append(f"line {number} of {self.name}: {exc}")
        return Readout(self.name, records, unreadable)


class ObjectLocation:
    """One object per checkpoint under an fsspec URL prefix (``s3://bucket/audit/``)."""

    def __init__(self, url: str, storage_options: dict[str, Any]) -> None:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self._fs: Any = fs
        self._root: str = root.rstrip("/")
        self.name = url
        self._newest: int | None = None
        self._lock = threading.Lock()

    def append_after(self, fetch: Fetch) -> int:
        with self._lock:
            if self._newest is None:
                self._newest = max((seq for seq, _ in self._objects()), default=0)
            written = 0
            for record in fetch(self._newest):
                path = f"{self._root}/{record.seq:020d}.json"
                self._fs.pipe_file(path, record.to_json().encode("utf-8"))
                self._newest, written = record.seq, written + 1
            return written

    def _objects(self) -> list[tuple[int, str]]:
        self._fs.invalidate_cache(self._root)
        try:
            paths = self._fs.find(self._root)
        except FileNotFoundError:
            return []
        found = []
        for path in paths:
            match = _OBJECT_NAME.search(str(path))
            if match:
                found.append((int(match.group(1)), str(path)))
        return sorted(found)

    def read(self) -> Readout:
        objects = self._objects()
        contents = self._fs.cat([path for _, path in objects]) if objects else {}
        records: list[ExternalCheckpoint] = []
        unreadable: list[str] = []
        for seq, path in objects:
            try:
                record = ExternalCheckpoint.from_json(bytes(contents[path]).decode("utf-8"))
                if record.seq != seq:
                    raise ValueError(f"it names entry {record.seq}")
                records.append(record)
            except (KeyError, UnicodeDecodeError, ValueError) as exc:
                unreadable.append(f"object {path}: {exc}")
        return Readout(self.name, records, unreadable)


# -- the database side ----------------------------------------------------------------------


def committed_after(db: Database, after: int) -> Iterator[ExternalCheckpoint]:
    """Committed checkpoints newer than ``after``, in seq order, each with its predecessor."""
    with db.session(Scope.everything()) as session:
        prev = session.scalar(
            select(AuditCheckpoint.seq)
            .where(AuditCheckpoint.seq <= after)
            .order_by(AuditCheckpoint.seq.desc())
            .limit(1)
        )
        rows = session.scalars(
            select(AuditCheckpoint).where(AuditCheckpoint.seq > after).order_by(AuditCheckpoint.seq)
        ).all()
    prev_seq = int(prev or 0)
    for row in rows:
        yield ExternalCheckpoint(
            seq=int(row.seq),
            hash=row.hash,
            prev_seq=prev_seq,
            key_id=row.key_id,
            at=row.at,
            signature=bytes(row.signature),
        )
        prev_seq = int(row.seq)


def _hashes(db: Database, column: Any, hash_column: Any, seqs: list[int]) -> dict[int, str]:
    found: dict[int, str] = {}
    for i in range(0, len(seqs), _QUERY_BATCH):
        chunk = seqs[i : i + _QUERY_BATCH]
        with db.session(Scope.everything()) as session:
            rows = session.execute(select(column, hash_column).where(column.in_(chunk))).all()
        found.update({int(seq): str(hash_) for seq, hash_ in rows})
    return found


@dataclass(frozen=True)
class ExternalProblem:
    seq: int | None
    problem: str


def check_external(
    db: Database,
    head_seq: int,
    db_checkpoints: int,
    readouts: Sequence[Readout],
    valid: Sequence[tuple[str, ExternalCheckpoint]],
) -> ExternalProblem | None:
    """Compare a verified database with the validly signed external records.

    ``head_seq`` and ``db_checkpoints`` come from the chain walk that just passed; ``valid``
    holds (location, record) for every record whose signature was checked.
    """
    for readout in readouts:
        if db_checkpoints and not readout.records and not readout.unreadable:
            return ExternalProblem(
                None,
                f"the database holds {db_checkpoints} signed checkpoints but the external "
                f"checkpoint log {readout.location} is missing or empty: it was deleted, or "
                "writing to it has failed (see the server log)",
            )
    if not valid:
        return None
    by_seq: dict[int, tuple[str, ExternalCheckpoint]] = {}
    for where, record in valid:
        by_seq.setdefault(record.seq, (where, record))
    seqs = sorted(by_seq)
    where, newest = by_seq[seqs[-1]]
    if newest.seq > head_seq:
        if head_seq == 0:
            return ExternalProblem(
                1,
                f"the audit log is empty but the external checkpoint of {newest.when} in "
                f"{where} covers entry {newest.seq}: the whole log was wiped",
            )
        return ExternalProblem(
            head_seq + 1,
            f"the audit log ends at entry {head_seq} but the external checkpoint of "
            f"{newest.when} in {where} covers entry {newest.seq}: entries after {head_seq} "
            "were deleted",
        )
    entries = _hashes(db, AuditEntry.seq, AuditEntry.hash, seqs)
    previous = 0
    for seq in seqs:
        where, record = by_seq[seq]
        if entries.get(seq) != record.hash:
            return ExternalProblem(
                previous + 1,
                f"entries {previous + 1} to {seq} were rewritten after being signed: entry "
                f"{seq} does not match the external checkpoint of {record.when} in {where}",
            )
        previous = seq
    checkpoints = _hashes(db, AuditCheckpoint.seq, AuditCheckpoint.hash, seqs)
    for seq in seqs:
        where, record = by_seq[seq]
        if checkpoints.get(seq) != record.hash:
            what = "was deleted from" if seq not in checkpoints else "differs in"
            return ExternalProblem(
                seq,
                f"the checkpoint for entry {seq} of {record.when} is in {where} but {what} "
                "the database",
            )
    return None


# -- taking checkpoints on time ---------------------------------------------------------


class CheckpointLoop:
    """A daemon thread that signs the head every ``interval_s`` when there are new entries.

    Every server worker may run one: :meth:`AuditLog.checkpoint_head` takes the head's lock
    and does nothing when a checkpoint already covers the head, so several loops never sign
    the same head twice. Each tick also retries exports that failed.
    """

    def __init__(self, audit: AuditLog, interval_s: float) -> None:
        self.audit, self.interval_s = audit, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="underlay-audit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.audit.checkpoint_head()
                self.audit.export_checkpoints()
            except Exception:  # keep ticking whatever one tick hit; it is logged
                log.exception("audit checkpoint tick failed; retrying at the next one")
