"""Audit log contract tests on SQLite and PostgreSQL: the chain, its fields and limits, checkpoints,
concurrency (tamper detection: test_tamper.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select

from tests.audit.support import failed, fill, sql
from underlay.audit import (
    GENESIS_HASH,
    MAX_DETAIL_BYTES,
    AuditLog,
    AuditReport,
    checkpoint_payload,
    checkpoint_signed,
    entry_hash,
)
from underlay.audit_checkpoints import check_external, committed_after
from underlay.config import Settings
from underlay.crypto import SigningKey
from underlay.errors import InvalidInput
from underlay.store import Database, Scope
from underlay.store.models import AuditCheckpoint, AuditEntry, AuditHead, Project

# -- the chain ----------------------------------------------------------------------------


def test_appends_form_a_verifiable_chain(db: Database, log: AuditLog, signer: SigningKey) -> None:
    fill(log, 8)
    with db.session(Scope.everything()) as s:
        entries = s.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
        head = s.get(AuditHead, 1)
        checkpoints = s.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)).all()
    assert [e.seq for e in entries] == list(range(1, 9))
    assert entries[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.hash
    assert all(entry_hash(e) == e.hash for e in entries)
    assert head is not None and (head.seq, head.hash) == (8, entries[-1].hash)
    assert [c.seq for c in checkpoints] == [3, 6]
    assert {c.key_id for c in checkpoints} == {signer.key_id}

    report = log.verify(signer.public_key_bytes())
    assert report == AuditReport(ok=True, entries_checked=8, checkpoints_checked=2, head_seq=8)
    assert report.summary == "audit log intact: 8 entries, 2 signed checkpoints"
    assert log.verify(signer).ok


def test_the_hashed_and_signed_encodings_are_pinned() -> None:
    """A verifier elsewhere (or next year's code) must recompute the same bytes."""
    at = dt.datetime(2024, 5, 1, 14, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    entry = SimpleNamespace(
        seq=7,
        at=at,
        actor="ana",
        action="run.create",
        resource="runs/é",
        project=None,
        client="10.0.0.2",
        outcome="ok",
        detail="{}",
        prev_hash=GENESIS_HASH,
    )
    canonical = (
        '{"action":"run.create","actor":"ana","at":"2024-05-01T12:00:00.000005+00:00",'
        '"client":"10.0.0.2","detail":"{}","outcome":"ok","prev_hash":"' + "0" * 64 + '",'
        '"project":null,"resource":"runs/é","seq":7,"v":1}'
    )
    assert entry_hash(entry) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert entry_hash(entry, seq=8) != entry_hash(entry)
    head = "ab" * 32
    assert (
        checkpoint_payload(6, head, 3, "k1", at)
        == (
            '{"at":"2024-05-01T12:00:00.000005+00:00","hash":"' + head + '","key_id":"k1",'
            '"kind":"underlay.audit.checkpoint","prev_seq":3,"seq":6,"v":2}'
        ).encode()
    )
    assert (
        checkpoint_payload(6, head, 3, "k1")
        == (
            '{"hash":"' + head + '","key_id":"k1","kind":"underlay.audit.checkpoint",'
            '"prev_seq":3,"seq":6,"v":1}'
        ).encode()
    )


def test_a_version_1_checkpoint_without_its_time_still_verifies(
    db: Database, log: AuditLog, signer: SigningKey
) -> None:
    fill(log, 7)
    with db.session(Scope.everything()) as s:
        third = s.scalars(select(AuditCheckpoint).where(AuditCheckpoint.seq == 3)).one()
        head, key_id, at = third.hash, third.key_id, third.at
        signature = bytes(third.signature)
    # What is written now signs the time too (version 2).
    Ed25519PublicKey.from_public_bytes(signer.public_key_bytes()).verify(
        signature, checkpoint_payload(3, head, 0, key_id, at)
    )
    old = signer.sign(checkpoint_payload(3, head, 0, key_id))
    public = Ed25519PublicKey.from_public_bytes(signer.public_key_bytes())
    assert checkpoint_signed(public, 3, head, 0, key_id, at, old)
    assert not checkpoint_signed(public, 3, head, 1, key_id, at, old)
    sql(db, "UPDATE audit_checkpoints SET signature = :sig WHERE seq = 3", sig=old)
    assert log.verify(signer).ok


def test_empty_log_verifies(log: AuditLog, signer: SigningKey) -> None:
    report = log.verify(signer)
    assert report.ok and report.entries_checked == 0 and report.head_seq == 0


def test_entry_fields_round_trip(db: Database, log: AuditLog) -> None:
    entry = log.record(
        actor="ana",
        action="run.create",
        resource="runs/7",
        outcome="error",
        project="vision",
        client="10.0.0.2",
        detail={"b": [1, 2], "a": "ü"},
    )
    with db.session(Scope.everything()) as s:
        stored = s.scalars(select(AuditEntry).where(AuditEntry.seq == entry.seq)).one()
    assert (stored.actor, stored.action, stored.resource) == ("ana", "run.create", "runs/7")
    assert (stored.outcome, stored.project, stored.client) == ("error", "vision", "10.0.0.2")
    assert stored.detail == '{"a":"ü","b":[1,2]}'
    assert stored.at == entry.at and stored.at.tzinfo is not None
    assert stored.hash == entry.hash == entry_hash(stored)


def test_append_commits_and_rolls_back_with_the_callers_transaction(
    db: Database, log: AuditLog, signer: SigningKey
) -> None:
    with pytest.raises(RuntimeError, match="boom"), db.session(Scope.everything()) as s:
        s.add(Project(name="doomed"))
        log.append(s, actor="ana", action="project.create", resource="doomed", outcome="ok")
        raise RuntimeError("boom")
    with db.session(Scope.everything()) as s:
        assert s.scalars(select(AuditEntry)).all() == []
        assert s.scalars(select(Project)).all() == []
        head = s.get(AuditHead, 1)
        assert head is not None and (head.seq, head.hash) == (0, GENESIS_HASH)

    with db.session(Scope.everything()) as s:
        project = Project(name="kept")
        s.add(project)
        s.flush()
        pid = project.id
    # A project-scoped session (what a route holds) can append too: audit rows are global.
    with db.session(Scope.projects(pid)) as s:
        entry = log.append(s, actor="ana", action="project.update", resource="kept", outcome="ok")
    assert (entry.seq, entry.client, entry.project, entry.detail) == (1, "", None, "{}")
    assert log.verify(signer).ok


def test_bad_input_is_refused_and_free_text_is_clipped(log: AuditLog) -> None:
    base: dict[str, Any] = {"actor": "ana", "action": "x.read", "resource": "r", "outcome": "ok"}
    with pytest.raises(InvalidInput, match="outcome must be one of ok, denied, error"):
        log.record(**{**base, "outcome": "maybe"})
    with pytest.raises(InvalidInput, match="actor must be a non-empty string"):
        log.record(**{**base, "actor": ""})
    with pytest.raises(InvalidInput, match="action must be at most 64 characters"):
        log.record(**{**base, "action": "a" * 65})
    with pytest.raises(InvalidInput, match="JSON-serialisable"):
        log.record(**base, detail={"when": dt.datetime.now(dt.UTC)})
    with pytest.raises(InvalidInput, match="keep it under"):
        log.record(**base, detail={"blob": "x" * 70_000})
    with pytest.raises(InvalidInput, match=r"detail must be a mapping \(got list\)$"):
        log.record(**base, detail=["not", "a", "mapping"])  # type: ignore[arg-type]

    entry = log.record(**{**base, "resource": "/p/" + "x" * 600 + "\x00"})
    assert len(entry.resource) == 512 and entry.resource.endswith("\u2026")


def test_field_limits_are_exact_and_nul_in_free_text_is_replaced(log: AuditLog) -> None:
    base: dict[str, Any] = {"actor": "ana", "action": "x.read", "resource": "r", "outcome": "ok"}
    for name in ("actor", "action", "project"):
        assert getattr(log.record(**{**base, name: "a" * 64}), name) == "a" * 64
        with pytest.raises(InvalidInput, match=f"audit {name} must be at most 64 characters"):
            log.record(**{**base, name: "a" * 65})
        with pytest.raises(InvalidInput, match=rf"{name} must be .* without NUL \(got 'a.x00b'"):
            log.record(**{**base, name: "a\x00b"})
        with pytest.raises(InvalidInput, match=rf"audit {name} must be a non-empty string \(got 7"):
            log.record(**{**base, name: 7})
    with pytest.raises(
        InvalidInput, match=r"audit outcome must be one of ok, denied, error \(got None"
    ):
        log.record(**{**base, "outcome": None})
    assert [log.record(**{**base, "outcome": o}).outcome for o in ("ok", "denied", "error")] == [
        "ok",
        "denied",
        "error",
    ]

    exact = log.record(**{**base, "resource": "r" * 512, "client": "c" * 64})
    assert (exact.resource, exact.client) == ("r" * 512, "c" * 64)
    cut = log.record(**{**base, "resource": "r" * 513, "client": "c" * 65})
    assert cut.resource == "r" * 511 + "\u2026" and cut.client == "c" * 63 + "\u2026"
    nul = log.record(**{**base, "resource": "a\x00b", "client": "\x00"})
    assert (nul.resource, nul.client) == ("a\ufffdb", "\ufffd")
    with pytest.raises(InvalidInput, match=r"audit resource must be a string \(got int"):
        log.record(**{**base, "resource": 5})
    with pytest.raises(InvalidInput, match=r"audit client must be a string \(got NoneType"):
        log.record(**{**base, "client": None})

    # The detail's limit is on its canonical UTF-8 bytes: {"b":"…"} is 8 bytes around the text.
    fits = log.record(**base, detail={"b": "x" * (MAX_DETAIL_BYTES - 8)})
    assert len(fits.detail.encode()) == MAX_DETAIL_BYTES
    with pytest.raises(InvalidInput, match="audit detail is 65537 characters; keep it under 65536"):
        log.record(**base, detail={"b": "x" * (MAX_DETAIL_BYTES - 7)})
    with pytest.raises(
        InvalidInput, match=r"keep it under 65536 bytes and store large payloads as blobs$"
    ):
        log.record(**base, detail={"b": "é" * (MAX_DETAIL_BYTES // 2)})
    with pytest.raises(InvalidInput, match="JSON-serialisable with string keys"):
        log.record(**base, detail={"x": float("nan")})
    plain = log.record(**base)
    assert (plain.detail, plain.client, plain.project) == ("{}", "", None)
    long = "a" * 100
    with pytest.raises(InvalidInput, match=rf"\(got '{'a' * 80}'\)$"):
        log.record(**{**base, "actor": long})


def test_constructor_and_verify_refuse_bad_keys(
    db: Database, signer: SigningKey, forger: SigningKey
) -> None:
    with pytest.raises(InvalidInput, match=r"at least 1 \(got 0"):
        AuditLog(db, signer, checkpoint_every=0)
    for bad in (True, 2.0, "3"):
        with pytest.raises(InvalidInput, match="checkpoint_every must be an integer"):
            AuditLog(db, signer, checkpoint_every=bad)  # type: ignore[arg-type]
    assert AuditLog(db, signer, checkpoint_every=1).checkpoint_every == 1
    assert AuditLog(db, signer).checkpoint_every == 100
    forger.key_id = ""
    with pytest.raises(InvalidInput, match=r"key id must be 1-32 characters \(got ''"):
        AuditLog(db, forger)
    forger.key_id = "k" * 32
    AuditLog(db, forger)
    forger.key_id = "k" * 33
    with pytest.raises(InvalidInput, match="key id must be 1-32 characters"):
        AuditLog(db, forger)
    with pytest.raises(InvalidInput, match="32-byte Ed25519 public key"):
        AuditLog(db, signer).verify(b"short")


def test_list_entries_filters_and_pages(db: Database, log: AuditLog) -> None:
    fill(log, 12)
    with db.session(Scope.everything()) as s:
        everything = log.list_entries(s, limit=1000)
        assert [e.seq for e in everything] == list(range(1, 13))
        denied = log.list_entries(s, outcome="denied")
        assert [e.seq for e in denied] == [1, 5, 9]
        mine = log.list_entries(s, actor="user1", action="dataset.create", project="sales")
        assert [e.seq for e in mine] == [2, 8]
        first = log.list_entries(s, limit=5)
        second = log.list_entries(s, limit=5, after_seq=first[-1].seq)
        assert [e.seq for e in first + second] == list(range(1, 11))
        middle = everything[5].at
        assert [e.seq for e in log.list_entries(s, since=middle)] == list(range(6, 13))
        assert [e.seq for e in log.list_entries(s, until=middle)] == list(range(1, 6))
        assert [e.seq for e in log.list_entries(s, limit=1)] == [1]
        newest = log.list_entries(s, newest_first=True, limit=3)
        assert [e.seq for e in newest] == [12, 11, 10]
        older = log.list_entries(s, newest_first=True, limit=3, before_seq=newest[-1].seq)
        assert [e.seq for e in older] == [9, 8, 7]
        between = log.list_entries(s, after_seq=3, before_seq=6)
        assert [e.seq for e in between] == [4, 5]
        assert [e.seq for e in log.list_entries(s, project="sales", limit=2)] == [2, 4]
        assert len(log.list_entries(s)) == 12  # the default limit (100) is above the count
        for bad in (0, 1001, True, 5.0, "5"):
            with pytest.raises(InvalidInput, match="limit must be between 1 and 1000"):
                log.list_entries(s, limit=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="until must be a timezone-aware"):
            log.list_entries(s, until=dt.datetime(2024, 1, 1))
        with pytest.raises(InvalidInput, match="since must be a timezone-aware"):
            log.list_entries(s, since=dt.datetime(2024, 1, 1))
        with pytest.raises(InvalidInput, match="outcome must be one of"):
            log.list_entries(s, outcome="fine")


def test_the_timer_signs_a_lone_first_entry(
    db: Database, log: AuditLog, signer: SigningKey
) -> None:
    assert log.checkpoint_head() is None  # an empty log: nothing to sign
    log.record(actor="ana", action="x.read", resource="r", outcome="ok")
    assert log.checkpoint_head() == 1
    assert log.checkpoint_head() is None
    assert log.verify(signer).checkpoints_checked == 1


_ROW = ("at", "actor", "action", "resource", "project", "client", "outcome", "detail")


def _entry_fields(db: Database, seq: int) -> dict[str, Any]:
    with db.session(Scope.everything()) as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.seq == seq)).one()
        return {name: getattr(entry, name) for name in (*_ROW, "prev_hash", "hash")}


def _overwrite(db: Database, seq: int, fields: dict[str, Any]) -> None:
    with db.session(Scope.everything()) as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.seq == seq)).one()
        for name, value in fields.items():
            setattr(entry, name, value)


def _signed_chain(db: Database, signer: SigningKey, n: int) -> None:
    """A valid chain of ``n`` entries, each signed, written in one go (appending a thousand
    entries one by one would make this test dominate a mutation run)."""
    at = dt.datetime.now(dt.UTC)
    rows: list[AuditEntry | AuditCheckpoint] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        entry = AuditEntry(
            seq=seq,
            at=at,
            actor="ana",
            action="x.read",
            resource=f"r/{seq}",
            project=None,
            client="",
            outcome="ok",
            detail="{}",
            prev_hash=prev,
        )
        entry.hash = prev = entry_hash(entry)
        signature = signer.sign(checkpoint_payload(seq, prev, seq - 1, signer.key_id, at))
        checkpoint = AuditCheckpoint(
            seq=seq, hash=prev, signature=signature, key_id=signer.key_id, at=at
        )
        rows += [entry, checkpoint]
    with db.session(Scope.everything()) as s:
        s.add_all(rows)
        head = s.get(AuditHead, 1)
        assert head is not None
        head.seq, head.hash = n, prev


def test_a_log_longer_than_one_batch(db: Database, signer: SigningKey) -> None:
    """Verification, the search for a moved entry and the external comparison each work in
    batches of about a thousand; a log of 1002 entries crosses every boundary."""
    log = AuditLog(db, signer, checkpoint_every=1)
    _signed_chain(db, signer, 1002)
    report = log.verify(signer)
    assert (report.ok, report.entries_checked, report.checkpoints_checked) == (True, 1002, 1002)
    with db.session(Scope.everything()) as s:
        assert [e.seq for e in log.list_entries(s)] == list(range(1, 101))  # the default limit
    # Every signed record is compared with the database, beyond the first batch of seqs too.
    records = [("here", r) for r in committed_after(db, 0)]
    assert len(records) == 1002
    assert check_external(db, 1002, 1002, [], records) is None

    first, second = _entry_fields(db, 1), _entry_fields(db, 2)
    # A moved entry is recognised up to a thousand places away, from entry 1 on.
    _overwrite(db, 2, first)
    failed(log.verify(signer), 2, "entry 2 is out of order: it was written as entry 1")
    _overwrite(db, 2, second)
    _overwrite(db, 1, _entry_fields(db, 1001))
    failed(log.verify(signer), 1, "entry 1 is out of order: it was written as entry 1001")
    _overwrite(db, 1, _entry_fields(db, 1002))
    failed(log.verify(signer), 1, "entry 1 was edited: its hash does not match its contents")
    _overwrite(db, 1, first)
    assert log.verify(signer).ok
    _overwrite(db, 1002, first)
    failed(log.verify(signer), 1002, "entry 1002 was edited: its hash does not match")


def test_a_chain_that_does_not_start_at_zero_is_named(
    db: Database, log: AuditLog, signer: SigningKey
) -> None:
    fill(log, 2)
    _overwrite(db, 1, {"prev_hash": "e" * 64})
    _overwrite(db, 1, {"hash": entry_hash(SimpleNamespace(**_entry_fields(db, 1), seq=1))})
    failed(log.verify(signer), 1, "entry 1 does not start the chain: its previous hash is not zero")


# -- concurrency --------------------------------------------------------------------------


def _append_from_threads(
    home: str, url: str, worker: int, threads: int, count: int, start: Any
) -> None:
    """Runs in a spawned process: its own Database, several threads appending at once."""
    database = Database(url)
    key = SigningKey(Settings(home=Path(home), store={"url": url}))
    log = AuditLog(database, key, checkpoint_every=25)

    def append_many(thread: int) -> None:
        start.wait(timeout=120)  # every thread of every process begins together
        for i in range(count):
            log.record(
                actor=f"w{worker}t{thread}",
                action="load.test",
                resource=f"item/{i}",
                outcome="ok",
                detail={"i": i},
            )

    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(append_many, range(threads)))
    finally:
        database.dispose()


def test_concurrent_processes_and_threads_form_one_chain(
    db: Database, settings: Settings, signer: SigningKey
) -> None:
    processes, threads, count = 2, 2, 50
    total = processes * threads * count
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes * threads)
    workers = [
        context.Process(
            target=_append_from_threads,
            args=(str(settings.home), db.url, w, threads, count, start),
        )
        for w in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
    assert [w.exitcode for w in workers] == [0] * processes

    report = AuditLog(db, signer, checkpoint_every=25).verify(signer)
    assert report == AuditReport(
        ok=True, entries_checked=total, checkpoints_checked=total // 25, head_seq=total
    )
    with db.session(Scope.everything()) as s:
        rows = s.execute(select(AuditEntry.seq, AuditEntry.actor).order_by(AuditEntry.seq)).all()
    assert [r.seq for r in rows] == list(range(1, total + 1))
    per_actor: dict[str, int] = {}
    for row in rows:
        per_actor[row.actor] = per_actor.get(row.actor, 0) + 1
    assert per_actor == {f"w{w}t{t}": count for w in range(processes) for t in range(threads)}
