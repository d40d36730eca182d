"""Verifying the audit log (see :mod:`underlay.audit`, **Verification streams**): the chain,
every checkpoint's signature, the head, the rows past it, and the external checkpoints.

Entries and checkpoints are read in ``seq`` order in short batches (one short transaction
each), so memory stays bounded and appends are never blocked for long. The log is checked up
to the head read first; entries appended meanwhile are left for the next run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Table, func, select

from underlay.audit_chain import (
    GENESIS_HASH,
    HEAD_ID,
    HasPublicKey,
    checkpoint_signed,
    entry_hash,
    public_key,
)
from underlay.audit_checkpoints import (
    CheckpointLocation,
    ExternalCheckpoint,
    ExternalProblem,
    Readout,
    check_external,
)
from underlay.errors import Unavailable
from underlay.store.db import Database, Scope
from underlay.store.models import AuditCheckpoint, AuditEntry, AuditHead

_VERIFY_BATCH = 1000


@dataclass(frozen=True)
class AuditReport:
    """The outcome of :meth:`AuditLog.verify`; ``problem`` names the first thing found wrong."""

    ok: bool
    entries_checked: int
    checkpoints_checked: int
    head_seq: int
    first_bad_seq: int | None = None
    problem: str | None = None

    @property
    def summary(self) -> str:
        if self.ok:
            return (
                f"audit log intact: {self.entries_checked} entries, "
                f"{self.checkpoints_checked} signed checkpoints"
            )
        return f"audit log tampered: {self.problem}"


class Verification:
    """One verification of the log of ``db`` (:meth:`AuditLog.verify` runs it)."""

    def __init__(
        self, db: Database, checkpoint_every: int, external: Sequence[CheckpointLocation]
    ) -> None:
        self._db = db
        self.checkpoint_every = checkpoint_every
        self.external = external

    def verify(self, key: bytes | HasPublicKey) -> AuditReport:
        """Check the whole chain and every checkpoint signature against ``key``.

        ``key`` is the raw Ed25519 public key, or anything with ``public_key_bytes()``.
        """
        verifier = _Verifier(public_key(key), self.checkpoint_every)
        # External records first: each was written after its commit, so none can name an
        # entry beyond the head read below.
        readouts, valid = self._read_external(verifier)
        with self._db.session(Scope.everything()) as session:
            head = session.execute(
                select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == HEAD_ID)
            ).one_or_none()
        if head is None:
            raise Unavailable("the audit log has no head row; apply migrations (underlay up)")
        head_seq, head_hash = int(head[0]), str(head[1])
        verifier.head_seq = head_seq
        checkpoints = self._stream(AuditCheckpoint.__table__, head_seq)  # type: ignore[arg-type]
        pending = next(checkpoints, None)
        for row in self._stream(AuditEntry.__table__, head_seq):  # type: ignore[arg-type]
            if not verifier.entry(row):
                return verifier.report()
            while pending is not None and pending.seq <= row.seq:
                if not verifier.checkpoint(pending, row):
                    return verifier.report()
                pending = next(checkpoints, None)
        if verifier.finish(head_hash):
            self._check_beyond_head(verifier)
        if verifier.problem is None:
            found = verifier.external_problem or check_external(
                self._db, head_seq, verifier.checkpoints, readouts, valid
            )
            if found is not None:
                verifier.fail(found.seq, found.problem)
        return verifier.report()

    def _read_external(
        self, verifier: _Verifier
    ) -> tuple[list[Readout], list[tuple[str, ExternalCheckpoint]]]:
        """Every location's records; the validly signed ones apart, the first bad one noted."""
        readouts: list[Readout] = []
        valid: list[tuple[str, ExternalCheckpoint]] = []
        for location in self.external:
            try:
                readout = location.read()
            except Exception as exc:  # any storage error: verification cannot be complete
                raise Unavailable(
                    f"cannot read the external audit checkpoints at {location.name}: {exc}"
                ) from exc
            readouts.append(readout)
            for bad in readout.unreadable:
                verifier.note_external(None, f"an external checkpoint is unreadable: {bad}")
            for r in readout.records:
                if checkpoint_signed(
                    verifier.key, r.seq, r.hash, r.prev_seq, r.key_id, r.at, r.signature
                ):
                    valid.append((readout.location, r))
                else:
                    verifier.note_external(
                        r.seq,
                        f"the external checkpoint for entry {r.seq} in {readout.location} "
                        f"has an invalid signature (key {r.key_id!r}): it was forged or altered",
                    )
        return readouts, valid

    def _stream(self, table: Table, upto: int) -> Iterator[Any]:
        """Rows of ``table`` with ``seq <= upto`` in seq order, one short transaction a batch."""
        after: int | None = None
        while True:
            stmt = select(table).where(table.c.seq <= upto).order_by(table.c.seq)
            if after is not None:
                stmt = stmt.where(table.c.seq > after)
            with self._db.session(Scope.everything()) as session:
                rows = session.execute(stmt.limit(_VERIFY_BATCH)).all()
            if not rows:
                return
            yield from rows
            after = rows[-1].seq

    def _check_beyond_head(self, verifier: _Verifier) -> None:
        """Rows past the head: inserted behind the log's back, or left by a rewound head."""
        head = select(AuditHead.seq).where(AuditHead.id == HEAD_ID).scalar_subquery()
        # One statement, so PostgreSQL reads the head and both tables from one snapshot.
        stmt = select(
            head,
            select(func.min(AuditEntry.seq)).where(AuditEntry.seq > head).scalar_subquery(),
            select(func.min(AuditCheckpoint.seq))
            .where(AuditCheckpoint.seq > head)
            .scalar_subquery(),
        )
        with self._db.session(Scope.everything()) as session:
            now_head, stray_entry, stray_checkpoint = session.execute(stmt).one()
        if stray_checkpoint is not None:
            verifier.fail(
                int(now_head) + 1,
                f"a checkpoint exists for entry {stray_checkpoint} but the head says {now_head}: "
                f"entries after {now_head} were deleted and the head rewound",
            )
        elif stray_entry is not None:
            verifier.fail(
                int(stray_entry),
                f"entry {stray_entry} lies beyond the head ({now_head}): it was inserted "
                "outside the audit log",
            )


class _Verifier:
    """The state of one verification pass; records the first problem and stops there."""

    def __init__(self, key: Ed25519PublicKey, checkpoint_every: int) -> None:
        self.key = key
        self.checkpoint_every = checkpoint_every
        self.head_seq = 0
        self.entries = 0
        self.checkpoints = 0
        self.last_seq = 0
        self.last_hash = GENESIS_HASH
        self.last_cp_seq = 0
        self.cp_interval = 0
        self.first_bad_seq: int | None = None
        self.problem: str | None = None
        self.external_problem: ExternalProblem | None = None

    def fail(self, seq: int | None, problem: str) -> bool:
        self.first_bad_seq, self.problem = seq, problem
        return False

    def note_external(self, seq: int | None, problem: str) -> None:
        """A bad external record: reported unless the database itself is found bad first."""
        if self.external_problem is None:
            self.external_problem = ExternalProblem(seq, problem)

    def report(self) -> AuditReport:
        return AuditReport(
            ok=self.problem is None,
            entries_checked=self.entries,
            checkpoints_checked=self.checkpoints,
            head_seq=self.head_seq,
            first_bad_seq=self.first_bad_seq,
            problem=self.problem,
        )

    def entry(self, row: Any) -> bool:
        seq, expected = int(row.seq), self.last_seq + 1
        if seq != expected:
            if seq == expected + 1:
                what = f"entry {expected} is"
            else:
                what = f"entries {expected} to {seq - 1} are"
            start = f"jumps from {self.last_seq} to {seq}" if self.last_seq else f"starts at {seq}"
            return self.fail(expected, f"{what} missing: sequence {start}")
        if entry_hash(row) != row.hash:
            return self.fail(seq, self._edited_or_moved(row))
        if row.prev_hash != self.last_hash:
            if seq == 1:
                return self.fail(
                    1, "entry 1 does not start the chain: its previous hash is not zero"
                )
            return self.fail(
                seq - 1,
                f"entry {seq - 1} was rewritten: entry {seq} links to a different hash",
            )
        self.entries += 1
        self.last_seq, self.last_hash = seq, row.hash
        return True

    def _edited_or_moved(self, row: Any) -> str:
        seq = int(row.seq)
        for other in range(max(1, seq - _VERIFY_BATCH), seq + _VERIFY_BATCH + 1):
            if other != seq and entry_hash(row, seq=other) == row.hash:
                return f"entry {seq} is out of order: it was written as entry {other}"
        return f"entry {seq} was edited: its hash does not match its contents"

    def checkpoint(self, cp: Any, row: Any) -> bool:
        seq = int(cp.seq)
        signature = bytes(cp.signature)
        if not checkpoint_signed(
            self.key, seq, cp.hash, self.last_cp_seq, cp.key_id, cp.at, signature
        ):
            return self.fail(
                seq,
                f"checkpoint at entry {seq} has an invalid signature (key {cp.key_id!r}): "
                "it was forged, signed by another key, or a checkpoint before it was deleted",
            )
        if seq != int(row.seq) or cp.hash != row.hash:
            first = self.last_cp_seq + 1
            return self.fail(
                first,
                f"entries {first} to {seq} were rewritten after being signed: "
                f"checkpoint {seq} does not match entry {seq}",
            )
        self.checkpoints += 1
        self.cp_interval, self.last_cp_seq = seq - self.last_cp_seq, seq
        return True

    def finish(self, head_hash: str) -> bool:
        if self.last_seq < self.head_seq:
            return self.fail(
                self.last_seq + 1,
                f"entries after {self.last_seq} were deleted: the head says {self.head_seq}",
            )
        if self.head_seq and head_hash != self.last_hash:
            return self.fail(
                self.head_seq,
                f"the head's hash does not match entry {self.head_seq}: the head or the last "
                "entry was altered",
            )
        # Checkpoints come every `interval` entries; a longer unsigned tail means the latest
        # checkpoints were deleted (likely to hide a rewrite). Taking the larger of the interval
        # in force and the last one observed keeps a changed setting from raising a false alarm.
        allowed = max(self.checkpoint_every, self.cp_interval)
        if self.head_seq - self.last_cp_seq >= allowed:
            missing = self.last_cp_seq + allowed
            return self.fail(
                missing,
                f"no signed checkpoint after entry {self.last_cp_seq} although the head says "
                f"{self.head_seq} and checkpoints come every {allowed} entries: the checkpoint "
                f"for entry {missing} or later was deleted",
            )
        return True
