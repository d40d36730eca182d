"""Audit log tamper detection on SQLite and PostgreSQL: each kind of tampering is named."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from tests.audit.support import failed, fill, rewrite_from, sql
from underlay.audit import (
    GENESIS_HASH,
    AuditLog,
    entry_hash,
)
from underlay.crypto import SigningKey
from underlay.errors import IntegrityFailure, Unavailable
from underlay.store import Database, Scope
from underlay.store.models import AuditEntry

# -- tamper detection ---------------------------------------------------------------------


def test_edited_entry_is_named(db: Database, log: AuditLog, signer: SigningKey) -> None:
    fill(log, 10)
    sql(db, "UPDATE audit_entries SET actor = 'mallory' WHERE seq = 5")
    failed(log.verify(signer), 5, "entry 5 was edited: its hash does not match its contents")


def test_deleted_middle_entry_is_named(db: Database, log: AuditLog, signer: SigningKey) -> None:
    fill(log, 10)
    sql(db, "DELETE FROM audit_entries WHERE seq = 5")
    failed(log.verify(signer), 5, "entry 5 is missing: sequence jumps from 4 to 6")
    sql(db, "DELETE FROM audit_entries WHERE seq IN (6, 7)")
    failed(log.verify(signer), 5, "entries 5 to 7 are missing: sequence jumps from 4 to 8")
    sql(db, "DELETE FROM audit_entries WHERE seq = 1")
    failed(log.verify(signer), 1, "entry 1 is missing: sequence starts at 2")


def test_deleted_tail_is_named(db: Database, log: AuditLog, signer: SigningKey) -> None:
    fill(log, 10)
    sql(db, "DELETE FROM audit_entries WHERE seq > 7")
    failed(log.verify(signer), 8, "entries after 7 were deleted: the head says 10")


def test_swapped_entries_are_named(db: Database, log: AuditLog, signer: SigningKey) -> None:
    fill(log, 10)
    sql(db, "UPDATE audit_entries SET seq = -4 WHERE seq = 4")
    sql(db, "UPDATE audit_entries SET seq = 4 WHERE seq = 5")
    sql(db, "UPDATE audit_entries SET seq = 5 WHERE seq = -4")
    failed(log.verify(signer), 4, "entry 4 is out of order: it was written as entry 5")


def test_rewritten_chain_is_caught_by_the_signed_checkpoint(
    db: Database, log: AuditLog, signer: SigningKey
) -> None:
    fill(log, 8)
    rewrite_from(db, 5, "mallory")
    failed(
        log.verify(signer),
        4,
        "entries 4 to 6 were rewritten after being signed: checkpoint 6 does not match entry 6",
    )


def test_rewritten_link_names_the_rewritten_entry(
    db: Database, log: AuditLog, signer: SigningKey
) -> None:
    fill(log, 8)
    with db.session(Scope.everything()) as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.seq == 7)).one()
        entry.actor = "mallory"
        entry.hash = entry_hash(entry)
    failed(log.verify(signer), 7, "entry 7 was rewritten: entry 8 links to a different hash")


def test_forged_checkpoint_signature_is_reported(
    db: Database, log: AuditLog, signer: SigningKey, forger: SigningKey
) -> None:
    fill(log, 7)
    sql(
        db,
        "UPDATE audit_checkpoints SET signature = :sig WHERE seq = 3",
        sig=forger.sign(b"anything"),
    )
    failed(
        log.verify(signer),
        3,
        f"checkpoint at entry 3 has an invalid signature (key {signer.key_id!r}): it was "
        "forged, signed by another key, or a checkpoint before it was deleted",
    )
    # Verifying an intact log with someone else's key fails the same way.
    sql(db, "DELETE FROM audit_checkpoints")
    sql(db, "DELETE FROM audit_entries")
    sql(db, "UPDATE audit_head SET seq = 0, hash = :h", h=GENESIS_HASH)
    fill(log, 4)
    failed(
        log.verify(forger),
        3,
        f"checkpoint at entry 3 has an invalid signature (key {signer.key_id!r})",
    )


def test_deleted_checkpoints_are_reported(db: Database, log: AuditLog, signer: SigningKey) -> None:
    fill(log, 10)
    sql(db, "DELETE FROM audit_checkpoints WHERE seq = 9")
    failed(
        log.verify(signer),
        9,
        "no signed checkpoint after entry 6 although the head says 10 and checkpoints come "
        "every 3 entries: the checkpoint for entry 9 or later was deleted",
    )
    sql(db, "DELETE FROM audit_checkpoints WHERE seq = 3")
    failed(log.verify(signer), 6, "checkpoint at entry 6 has an invalid signature")


def test_a_tail_exactly_one_interval_long_needs_its_checkpoint(
    db: Database, log: AuditLog, signer: SigningKey
) -> None:
    fill(log, 9)
    sql(db, "DELETE FROM audit_checkpoints WHERE seq = 9")
    failed(log.verify(signer), 9, "no signed checkpoint after entry 6 although the head says 9")


def test_rewound_head_and_stray_rows_are_reported(
    db: Database, log: AuditLog, signer: SigningKey
) -> None:
    fill(log, 10)
    with db.session(Scope.everything()) as s:
        seventh = s.scalars(select(AuditEntry).where(AuditEntry.seq == 7)).one().hash
    sql(db, "DELETE FROM audit_entries WHERE seq > 7")
    sql(db, "UPDATE audit_head SET seq = 7, hash = :h", h=seventh)
    failed(
        log.verify(signer),
        8,
        "a checkpoint exists for entry 9 but the head says 7: entries after 7 were deleted",
    )

    sql(db, "DELETE FROM audit_checkpoints WHERE seq = 9")
    assert log.verify(signer).ok
    sql(
        db,
        "INSERT INTO audit_entries (seq, at, actor, action, resource, project, client, outcome,"
        " detail, prev_hash, hash) SELECT 12, at, actor, action, resource, project, client,"
        " outcome, detail, prev_hash, hash FROM audit_entries WHERE seq = 7",
    )
    failed(
        log.verify(signer),
        12,
        "entry 12 lies beyond the head (7): it was inserted outside the audit log",
    )


def test_append_refuses_to_write_over_a_stray_entry(
    db: Database, log: AuditLog, signer: SigningKey
) -> None:
    fill(log, 2)
    sql(
        db,
        "INSERT INTO audit_entries (seq, at, actor, action, resource, project, client, outcome,"
        " detail, prev_hash, hash) SELECT 3, at, actor, action, resource, project, client,"
        " outcome, detail, prev_hash, hash FROM audit_entries WHERE seq = 2",
    )
    stray = re.escape(
        "audit entry or checkpoint 3 already exists although the head says 2: the audit log "
        "was altered outside underlay; run `underlay audit verify --local`"
    )
    with pytest.raises(IntegrityFailure, match=stray):
        log.record(actor="ana", action="x.read", resource="r", outcome="ok")
    failed(log.verify(signer), 3, "entry 3 lies beyond the head (2)")

    # A stray checkpoint where the next checkpoint goes (checkpoint_every is 3).
    sql(db, "DELETE FROM audit_entries WHERE seq = 3")
    sql(
        db,
        "INSERT INTO audit_checkpoints (seq, hash, signature, key_id, at)"
        " SELECT 3, hash, :sig, 'k', at FROM audit_entries WHERE seq = 2",
        sig=b"s",
    )
    with pytest.raises(IntegrityFailure, match=stray):
        log.record(actor="ana", action="x.read", resource="r", outcome="ok")
    failed(log.verify(signer), 3, "a checkpoint exists for entry 3 but the head says 2")


def test_altered_head_is_reported(db: Database, log: AuditLog, signer: SigningKey) -> None:
    fill(log, 4)
    sql(db, "UPDATE audit_head SET hash = :h", h="f" * 64)
    failed(
        log.verify(signer),
        4,
        "the head's hash does not match entry 4: the head or the last entry was altered",
    )


def test_a_missing_head_row_is_unavailable(db: Database, log: AuditLog, signer: SigningKey) -> None:
    fill(log, 2)
    sql(db, "DELETE FROM audit_head")
    no_head = r"^the audit log has no head row; apply migrations \(underlay up\)$"
    with pytest.raises(Unavailable, match=no_head):
        log.record(actor="ana", action="x.read", resource="r", outcome="ok")
    with pytest.raises(Unavailable, match=no_head):
        log.checkpoint_head()
    with pytest.raises(Unavailable, match=no_head):
        log.verify(signer)
