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
* **Verification streams** (:mod:`underlay.audit_verify`). :meth:`AuditLog.verify` reads
  entries and checkpoints in ``seq`` order in short batches (one short transaction each), so
  memory stays bounded and appends are never blocked for long. It checks the log up to the
  head it read first; entries appended meanwhile are left for the next run.

The encodings an entry's hash and a checkpoint's signature cover are :mod:`underlay.audit_chain`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import event, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from underlay.audit_chain import (
    GENESIS_HASH,
    HEAD_ID,
    HasPublicKey,
    canonical,
    checkpoint_payload,
    checkpoint_signed,
    entry_hash,
)
from underlay.audit_checkpoints import CheckpointLocation, committed_after
from underlay.audit_verify import AuditReport, Verification
from underlay.errors import IntegrityFailure, InvalidInput, Unavailable
from underlay.store.db import Database, Scope
from underlay.store.models import AuditCheckpoint, AuditEntry, AuditHead
from underlay.store.types import utcnow

# the chain's encodings and the verification report, importable from here as before
__all__ = [
    "GENESIS_HASH",
    "MAX_DETAIL_BYTES",
    "MAX_LIST_LIMIT",
    "OUTCOMES",
    "AuditLog",
    "AuditReport",
    "HasPublicKey",
    "Signer",
    "checkpoint_payload",
    "checkpoint_signed",
    "entry_hash",
]

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "denied", "error")
MAX_LIST_LIMIT = 1000
MAX_DETAIL_BYTES = 64 * 1024


class Signer(Protocol):
    """What the audit log needs from a signing key (``underlay.crypto.SigningKey`` fits)."""

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...

    def public_key_bytes(self) -> bytes: ...


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
        text = canonical(dict(detail)).decode("utf-8")
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
            .where(AuditHead.id == HEAD_ID)
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
            .where(AuditHead.id == HEAD_ID)
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
                .where(AuditHead.id == HEAD_ID)
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
        """Check the whole chain and every checkpoint signature against ``key``
        (:mod:`underlay.audit_verify`).

        ``key`` is the raw Ed25519 public key, or anything with ``public_key_bytes()``.
        """
        return Verification(self._db, self.checkpoint_every, self.external).verify(key)
