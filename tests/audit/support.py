"""Helpers of the audit tests: filling a log, raw SQL on it, checking a failed verify, and
what an attacker with database access does (rewinding, rewriting the chain)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text

from underlay.audit import GENESIS_HASH, AuditLog, AuditReport, entry_hash
from underlay.store import Database, Scope
from underlay.store.models import AuditEntry, AuditHead


def fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.record(
            actor=f"user{i % 3}",
            action="dataset.create" if i % 2 else "model.read",
            resource=f"/api/v1/things/{i}",
            outcome="ok" if i % 4 else "denied",
            project="sales" if i % 2 else None,
            client="127.0.0.1",
            detail={"i": i, "note": "héllo"},
        )


def sql(db: Database, statement: str, **params: Any) -> None:
    with db.engine.begin() as conn:
        conn.execute(text(statement), params)


def failed(report: AuditReport, seq: int | None, match: str) -> None:
    assert not report.ok, report
    assert report.first_bad_seq == seq, report
    assert report.problem is not None
    assert report.problem.startswith(match), report.problem
    assert report.summary == f"audit log tampered: {report.problem}"


def rewind(db: Database, seq: int) -> None:
    """Delete every entry and checkpoint after ``seq`` and point the head at ``seq``."""
    with db.session(Scope.everything()) as s:
        kept = s.scalars(select(AuditEntry.hash).where(AuditEntry.seq == seq)).one_or_none()
    head_hash = kept or GENESIS_HASH
    sql(db, "DELETE FROM audit_entries WHERE seq > :s", s=seq)
    sql(db, "DELETE FROM audit_checkpoints WHERE seq > :s", s=seq)
    sql(db, "UPDATE audit_head SET seq = :s, hash = :h", s=seq, h=head_hash)


def rewrite_from(db: Database, seq: int, actor: str) -> None:
    """What an attacker with database access does: edit, then recompute every later hash."""
    with db.session(Scope.everything()) as s:
        entries = s.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
        prev = entries[seq - 2].hash if seq > 1 else GENESIS_HASH
        for entry in entries[seq - 1 :]:
            if entry.seq == seq:
                entry.actor = actor
            entry.prev_hash = prev
            entry.hash = prev = entry_hash(entry)
        head = s.get(AuditHead, 1)
        assert head is not None
        head.hash = prev
