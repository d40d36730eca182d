"""Helpers of the audit tests: filling a log, raw SQL on it, checking a failed verify."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from underlay.audit import (
    AuditLog,
    AuditReport,
)
from underlay.store import Database


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
