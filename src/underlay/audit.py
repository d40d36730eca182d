"""The audit log: an append-only, hash-chained record of every mutation and sensitive read.

Design decisions:

* **A hash chain, serialised by the database.** Each entry stores the SHA-256 of a canonical
  encoding of its fields and of the previous entry's hash. An append starts with an ``UPDATE``
  of the single ``audit_head`` row, which on PostgreSQL holds that row's lock until commit and on
  SQLite runs inside a ``BEGIN IMMEDIATE`` transaction, so appends from any number of threads
  and processes form one chain with contiguous sequence numbers and no forks.
* **Same transaction as the change it records.** :meth:`AuditLog.append` writes inside the
  caller's session: a mutation and its audit entry commit or roll back together.
  :meth:`AuditLog.record` opens its own transaction for events that write nothing else
  (denied requests, reads).
* **Signed checkpoints.** Every ``checkpoint_every`` entries, and on a timer when there are
  new entries (:meth:`AuditLog.checkpoint_head`), the head ``(seq, hash)`` is signed with
  Ed25519 together with the time and the previous checkpoint. The chain alone detects an
  edited, deleted or reordered entry; the signatures detect a rewritten chain (someone with
  database access recomputing every hash). Each signed payload names the previous checkpoint,
  so deleting a checkpoint breaks the next one's signature, and :meth:`AuditLog.verify` flags
  a head that is further past the last checkpoint than the checkpoint interval allows.
* **Checkpoints also live outside the database.** No in-database check can catch cutting the
  log, its checkpoints and the head back together, or wiping them. After each commit that
  made a checkpoint, the new checkpoints are appended to the external locations
  (:mod:`underlay.audit_checkpoints`), and verification compares the database with them.
* **Verification streams.** :meth:`AuditLog.verify` reads entries and checkpoints in ``seq``
  order in short batches (one short transaction each), so memory stays bounded and appends are
  never blocked for long. It checks the log up to the head it read first; entries appended
  meanwhile are left for the next run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Table, event, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from underlay.audit_checkpoints import (
    CheckpointLocation,
    ExternalCheckpoint,
    ExternalProblem,
    Readout,
    check_external,
    committed_after,
)
from underlay.errors import IntegrityFailure, InvalidInput, Unavailable
from underlay.store.db import Database, Scope
from underlay.store.models import AuditCheckpoint, AuditEntry, AuditHead
from underlay.store.types import utcnow

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
OUTCOMES = ("ok", "denied", "error")
MAX_LIST_LIMIT = 1000
MAX_DETAIL_BYTES = 64 * 1024

_HEAD_ID = 1
_VERIFY_BATCH = 1000
_CHECKPOINT_KIND = "underlay.audit.checkpoint"


class Signer(Protocol):
    """What the audit log needs from a signing key (``underlay.crypto.SigningKey`` fits)."""

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...

    def public_key_bytes(self) -> bytes: ...


class HasPublicKey(Protocol):
    def public_key_bytes(self) -> bytes: ...


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


# -- canonical encodings --------------------------------------------------------------------


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds")


def entry_hash(entry: Any, *, seq: int | None = None) -> str:
    """SHA-256 of an entry's canonical encoding; ``entry`` is an AuditEntry or a table row."""
    fields = {
        "v": 1,
        "seq": entry.seq if seq is None else seq,
        "at": _iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "resource": entry.resource,
        "project": entry.project,
        "client": entry.client,
        "outcome": entry.outcome,
        "detail": entry.detail,
        "prev_hash": entry.prev_hash,
    }
    return hashlib.sha256(_canonical(fields)).hexdigest()


def checkpoint_payload(
    seq: int, hash_: str, prev_seq: int, key_id: str, at: dt.datetime | None = None
) -> bytes:
    """The bytes a checkpoint signs: the head, the previous checkpoint's seq, the key id and
    (version 2, every checkpoint written now) the time; version 1 without it still verifies."""
    fields: dict[str, Any] = {
        "kind": _CHECKPOINT_KIND,
        "v": 1,
        "seq": seq,
        "hash": hash_,
        "prev_seq": prev_seq,
        "key_id": key_id,
    }
    if at is not None:
        fields.update(v=2, at=_iso(at))
    return _canonical(fields)


def checkpoint_signed(
    key: Ed25519PublicKey,
    seq: int,
    hash_: str,
    prev_seq: int,
    key_id: str,
    at: dt.datetime,
    signature: bytes,
) -> bool:
    """Whether ``signature`` signs this checkpoint (with its time, or a version-1 one without)."""
    return any(
        _signature_ok(key, checkpoint_payload(seq, hash_, prev_seq, key_id, when), signature)
        for when in (at, None)
    )


# -- input checks ---------------------------------------------------------------------------


def _require_text(name: str, value: object, max_len: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"audit {name} must be a non-empty string (got {value!r})")
    if len(value) > max_len or "\x00" in value:
        raise InvalidInput(
            f"audit {name} must be at most {max_len} characters without NUL (got {value[:80]!r})"
        )
    return value


def _clip(name: str, value: object, max_len: int) -> str:
    """Free text that may come from a request: kept, but cut to the column's size.

    Refusing an over-long request path would let a caller avoid being audited.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"audit {name} must be a string (got {type(value).__name__})")
    value = value.replace("\x00", "\ufffd")
    return value if len(value) <= max_len else value[: max_len - 1] + "\u2026"


def _detail_text(detail: Mapping[str, Any] | None) -> str:
    if detail is None:
        return "{}"
    if not isinstance(detail, Mapping):
        raise InvalidInput(f"audit detail must be a mapping (got {type(detail).__name__})")
    try:
        text = _canonical(dict(detail)).decode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"audit detail must be JSON-serialisable with string keys: {exc}"
        ) from exc
    if len(text.encode("utf-8")) > MAX_DETAIL_BYTES:
        raise InvalidInput(
            f"audit detail is {len(text)} characters; keep it under {MAX_DETAIL_BYTES} bytes "
            "and store large payloads as blobs"
        )
    return text


def _check_outcome(outcome: object) -> str:
    if outcome not in OUTCOMES:
        raise InvalidInput(f"audit outcome must be one of {', '.join(OUTCOMES)} (got {outcome!r})")
    assert isinstance(outcome, str)
    return outcome


def _public_key(key: bytes | HasPublicKey) -> Ed25519PublicKey:
    raw = key if isinstance(key, bytes) else key.public_key_bytes()
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise InvalidInput(
            f"audit verification needs a raw 32-byte Ed25519 public key (got {len(raw)} bytes)"
        ) from exc


def _signature_ok(key: Ed25519PublicKey, payload: bytes, signature: bytes) -> bool:
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


def _flush(session: Session, seq: int) -> None:
    try:
        session.flush()
    except IntegrityError as exc:
        raise IntegrityFailure(
            f"audit entry or checkpoint {seq} already exists although the head says "
            f"{seq - 1}: the audit log was altered outside underlay; run "
            "`underlay audit verify --local`"
        ) from exc


# -- the log --------------------------------------------------------------------------------


class AuditLog:
    """Appends to, lists and verifies the audit chain of one metadata database."""

    def __init__(
        self,
        db: Database,
        signer: Signer,
        checkpoint_every: int = 100,
        external: Sequence[CheckpointLocation] = (),
    ) -> None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int):
            raise InvalidInput("checkpoint_every must be an integer")
        if checkpoint_every < 1:
            raise InvalidInput(f"checkpoint_every must be at least 1 (got {checkpoint_every})")
        if not signer.key_id or len(signer.key_id) > 32:
            raise InvalidInput(
                f"audit signing key id must be 1-32 characters (got {signer.key_id!r})"
            )
        self._db = db
        self._signer = signer
        self.checkpoint_every = checkpoint_every
        self.external = tuple(external)

    # -- writing ------------------------------------------------------------------------

    def append(
        self,
        session: Session,
        *,
        actor: str,
        action: str,
        resource: str,
        outcome: str,
        project: str | None = None,
        client: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry inside the caller's transaction; it commits or rolls back with it.

        ``resource`` and ``client`` are cut to 512 and 64 characters; the other fields are
        refused with :class:`InvalidInput` when malformed.
        """
        fields = {
            "actor": _require_text("actor", actor, 64),
            "action": _require_text("action", action, 64),
            "resource": _clip("resource", resource, 512),
            "outcome": _check_outcome(outcome),
            "project": None if project is None else _require_text("project", project, 64),
            "client": _clip("client", client, 64),
            "detail": _detail_text(detail),
        }
        # The caller's pending rows go out first, so a failure below is the audit log's own.
        session.flush()
        # The head UPDATE comes first: it is the lock that orders concurrent appends.
        bump = (
            update(AuditHead)
            .where(AuditHead.id == _HEAD_ID)
            .values(seq=AuditHead.seq + 1)
            .returning(AuditHead.seq, AuditHead.hash)
            .execution_options(synchronize_session=False)
        )
        head = session.execute(bump).one_or_none()
        if head is None:
            raise Unavailable("the audit log has no head row; apply migrations (underlay up)")
        seq, prev_hash = int(head[0]), str(head[1])
        entry = AuditEntry(seq=seq, at=utcnow(), prev_hash=prev_hash, **fields)
        entry.hash = entry_hash(entry)
        session.execute(
            update(AuditHead)
            .where(AuditHead.id == _HEAD_ID)
            .values(hash=entry.hash)
            .execution_options(synchronize_session=False)
        )
        session.add(entry)
        _flush(session, seq)
        if seq % self.checkpoint_every == 0:
            self._checkpoint(session, seq, entry.hash)
            _flush(session, seq)
        return entry

    def record(
        self,
        *,
        actor: str,
        action: str,
        resource: str,
        outcome: str,
        project: str | None = None,
        client: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry in a transaction of its own (denied requests, reads)."""
        with self._db.session(Scope.everything()) as session:
            return self.append(
                session,
                actor=actor,
                action=action,
                resource=resource,
                outcome=outcome,
                project=project,
                client=client,
                detail=detail,
            )

    def checkpoint_head(self) -> int | None:
        """Sign the head now if no checkpoint covers it yet (the timer); returns its seq."""
        with self._db.session(Scope.everything()) as session:
            # A no-op UPDATE of the head takes the same lock as an append.
            head = session.execute(
                update(AuditHead)
                .where(AuditHead.id == _HEAD_ID)
                .values(seq=AuditHead.seq)
                .returning(AuditHead.seq, AuditHead.hash)
                .execution_options(synchronize_session=False)
            ).one_or_none()
            if head is None:
                raise Unavailable("the audit log has no head row; apply migrations (underlay up)")
            seq, hash_ = int(head[0]), str(head[1])
            last = session.scalar(select(func.max(AuditCheckpoint.seq))) or 0
            if seq <= last:
                return None
            self._checkpoint(session, seq, hash_)
            _flush(session, seq)
        return seq

    def export_checkpoints(self) -> None:
        """Bring every external location up to date; a failure is logged and retried later."""
        for location in self.external:
            try:
                location.append_after(lambda after: committed_after(self._db, after))
            except Exception as exc:  # any storage error: the entry is safe in the database
                log.warning(
                    "could not write audit checkpoints to %s (retried at the next checkpoint): %s",
                    location.name,
                    exc,
                )

    def _checkpoint(self, session: Session, seq: int, hash_: str) -> None:
        prev_seq = session.scalar(select(func.max(AuditCheckpoint.seq))) or 0
        key_id = self._signer.key_id
        at = utcnow()
        payload = checkpoint_payload(seq, hash_, int(prev_seq), key_id, at)
        session.add(
            AuditCheckpoint(
                seq=seq, hash=hash_, signature=self._signer.sign(payload), key_id=key_id, at=at
            )
        )
        if self.external and not session.info.get("audit_export"):
            session.info["audit_export"] = True
            event.listen(session, "after_commit", self._export_after_commit, once=True)

    def _export_after_commit(self, session: Session) -> None:
        session.info.pop("audit_export", None)
        self.export_checkpoints()

    # -- reading ------------------------------------------------------------------------

    def list_entries(
        self,
        session: Session,
        *,
        actor: str | None = None,
        action: str | None = None,
        project: str | None = None,
        outcome: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 100,
        after_seq: int | None = None,
        before_seq: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditEntry]:
        """Entries matching every given filter, in ``seq`` order (``newest_first``: reversed).
        Page forward with ``after_seq`` (entries above it), back with ``before_seq``."""
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_LIST_LIMIT
        ):
            raise InvalidInput(f"limit must be between 1 and {MAX_LIST_LIMIT} (got {limit!r})")
        for name, moment in (("since", since), ("until", until)):
            if moment is not None and moment.tzinfo is None:
                raise InvalidInput(f"{name} must be a timezone-aware datetime (add tzinfo=UTC)")
        order = AuditEntry.seq.desc() if newest_first else AuditEntry.seq
        stmt = select(AuditEntry).order_by(order).limit(limit)
        if outcome is not None:
            stmt = stmt.where(AuditEntry.outcome == _check_outcome(outcome))
        if actor is not None:
            stmt = stmt.where(AuditEntry.actor == actor)
        if action is not None:
            stmt = stmt.where(AuditEntry.action == action)
        if project is not None:
            stmt = stmt.where(AuditEntry.project == project)
        if since is not None:
            stmt = stmt.where(AuditEntry.at >= since)
        if until is not None:
            stmt = stmt.where(AuditEntry.at < until)
        if after_seq is not None:
            stmt = stmt.where(AuditEntry.seq > after_seq)
        if before_seq is not None:
            stmt = stmt.where(AuditEntry.seq < before_seq)
        return list(session.scalars(stmt))

    # -- verification -------------------------------------------------------------------

    def verify(self, key: bytes | HasPublicKey) -> AuditReport:
        """Check the whole chain and every checkpoint signature against ``key``.

        ``key`` is the raw Ed25519 public key, or anything with ``public_key_bytes()``.
        """
        public = _public_key(key)
        verifier = _Verifier(public, self.checkpoint_every)
        # External records first: each was written after its commit, so none can name an
        # entry beyond the head read below.
        readouts, valid = self._read_external(verifier)
        with self._db.session(Scope.everything()) as session:
            head = session.execute(
                select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == _HEAD_ID)
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
        head = select(AuditHead.seq).where(AuditHead.id == _HEAD_ID).scalar_subquery()
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
