"""External audit checkpoints on SQLite and PostgreSQL: each attack the security review tried on
the database is done here with SQL, as an attacker would, and verification must fail and name it.

Each attack test first shows that the database alone still looks intact (the review's finding),
then that the comparison with the external checkpoint log catches it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import fsspec
import pytest
from sqlalchemy import select

from tests.audit.support import failed, fill, rewind, rewrite_from, sql
from tests.test_blobs_s3 import BUCKET, CREDENTIALS, s3_endpoint  # noqa: F401 (a fixture)
from underlay.audit import AuditLog
from underlay.audit_checkpoints import (
    CheckpointLoop,
    ExternalCheckpoint,
    FileLocation,
    ObjectLocation,
)
from underlay.config import Settings
from underlay.crypto import SigningKey
from underlay.store import Database, Scope
from underlay.store.models import AuditEntry, AuditHead


@pytest.fixture
def signer(settings: Settings) -> SigningKey:
    return SigningKey(settings)


@pytest.fixture
def outside(settings: Settings) -> FileLocation:
    return FileLocation(settings.audit_checkpoint_path)


@pytest.fixture
def log(db: Database, signer: SigningKey, outside: FileLocation) -> AuditLog:
    return AuditLog(db, signer, checkpoint_every=3, external=[outside])


@pytest.fixture
def db_only(db: Database, signer: SigningKey) -> AuditLog:
    """The same log verified without its external checkpoints: what the review ran."""
    return AuditLog(db, signer, checkpoint_every=3)


def _seqs(location: FileLocation | ObjectLocation) -> list[int]:
    readout = location.read()
    assert readout.unreadable == []
    return [r.seq for r in readout.records]


def _hash_of(db: Database, seq: int) -> str:
    with db.session(Scope.everything()) as s:
        return s.scalars(select(AuditEntry.hash).where(AuditEntry.seq == seq)).one()


# -- writing ------------------------------------------------------------------------------


def test_intact_log_passes_and_its_checkpoints_are_written_outside(
    db: Database,
    log: AuditLog,
    signer: SigningKey,
    outside: FileLocation,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="underlay.audit"):
        fill(log, 10)
    assert _seqs(outside) == [3, 6, 9]
    assert stat.S_IMODE(outside.path.stat().st_mode) == 0o600
    first = json.loads(outside.path.read_text().splitlines()[0])
    assert (first["seq"], first["hash"], first["prev_seq"]) == (3, _hash_of(db, 3), 0)
    assert first["key_id"] == signer.key_id and first["at"] and first["signature"]

    assert log.checkpoint_head() == 10  # what the timer does: the tail gets signed too
    assert log.checkpoint_head() is None  # nothing new: no second checkpoint of one head
    assert _seqs(outside) == [3, 6, 9, 10]
    report = log.verify(signer)
    assert report.ok, report
    assert report.checkpoints_checked == 4
    # A second writer (another worker) catching up writes nothing twice.
    FileLocation(outside.path).append_after(lambda after: [])
    log.export_checkpoints()
    assert _seqs(outside) == [3, 6, 9, 10]
    assert "could not write audit checkpoints" not in caplog.text


def test_a_failed_external_write_loses_no_entry_and_is_retried(
    db: Database, signer: SigningKey, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "not-yet"
    outside = FileLocation(folder / "audit-checkpoints.jsonl")
    log = AuditLog(db, signer, checkpoint_every=3, external=[outside])
    with caplog.at_level(logging.WARNING, logger="underlay.audit"):
        fill(log, 4)
    warnings = [r.getMessage() for r in caplog.records if r.name == "underlay.audit"]
    assert len(warnings) == 1  # one checkpoint, one failed export
    assert warnings[0].startswith(
        f"could not write audit checkpoints to {outside.path} (retried at the next checkpoint): "
        "[Errno 2] No such file or directory"
    )
    with db.session(Scope.everything()) as s:
        assert s.scalars(select(AuditEntry.seq)).all() == [1, 2, 3, 4]
    folder.mkdir()
    fill(log, 3)  # the next checkpoint (6) brings the missed one (3) along
    assert _seqs(outside) == [3, 6]
    assert log.verify(signer).ok


def test_the_external_record_format_is_pinned_and_bad_records_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A local time zone far from UTC: the record must still be written in UTC.
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        at = dt.datetime(2024, 5, 1, 14, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        record = ExternalCheckpoint(
            seq=1, hash="ab" * 32, prev_seq=0, key_id="k1", at=at, signature=b"\x00\xffsig"
        )
        text = record.to_json()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert text == (
        '{"at":"2024-05-01T12:00:00.000005+00:00","hash":"' + "ab" * 32 + '","key_id":"k1",'
        '"kind":"underlay.audit.checkpoint","prev_seq":0,"seq":1,"signature":"AP9zaWc="}'
    )
    assert ExternalCheckpoint.from_json(text) == record  # sequence 1 is the smallest allowed
    assert record.when == "2024-05-01 12:00:00 UTC"

    fields = json.loads(text)
    bad = {
        "[1]": "not an underlay audit checkpoint",
        json.dumps({**fields, "kind": "other"}): "not an underlay audit checkpoint",
        json.dumps({**fields, "at": "2024-05-01T12:00:00"}): "its time has no timezone",
        json.dumps({**fields, "signature": "AP9z!aWc="}): "",  # the wording is binascii's
        json.dumps({**fields, "seq": 0}): "sequence 0",
        json.dumps({k: v for k, v in fields.items() if k != "hash"}): "'hash'",
    }
    for line, why in bad.items():
        with pytest.raises(ValueError, match=rf"^unreadable record \({re.escape(why)}"):
            ExternalCheckpoint.from_json(line)


def _record(seq: int) -> ExternalCheckpoint:
    at = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    return ExternalCheckpoint(
        seq=seq, hash="ab" * 32, prev_seq=seq - 1, key_id="k1", at=at, signature=b"s"
    )


def test_a_file_location_appends_after_the_newest_record_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "new" / "audit-checkpoints.jsonl"
    path.parent.mkdir()
    location = FileLocation(path)
    asked: list[int] = []

    def fetch(*seqs: int) -> Callable[[int], list[ExternalCheckpoint]]:
        def records(after: int) -> list[ExternalCheckpoint]:
            asked.append(after)
            return [_record(seq) for seq in seqs]

        return records

    assert location.append_after(fetch(1, 2)) == 2  # creates the file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert FileLocation(path).append_after(fetch(3)) == 1
    assert asked == [0, 2]
    assert _seqs(location) == [1, 2, 3]

    # The newest record is found in the file's tail, or, if the tail holds none, further up.
    garbage = "x" * 100 + "\n"
    with path.open("a") as handle:
        handle.write(garbage * 200)  # 20 KB: more than the tail that is read first
    assert location.append_after(fetch()) == 0
    path.write_text(_record(7).to_json() + "\n" + garbage * 200)
    assert location.append_after(fetch()) == 0
    path.write_text("".join(_record(seq).to_json() + "\n" for seq in range(1, 200)))
    assert location.append_after(fetch()) == 0
    with path.open("ab") as raw:
        raw.write(b"\xff\xfe not UTF-8\n")  # a torn or corrupted write is skipped
    assert location.append_after(fetch()) == 0
    assert asked == [0, 2, 3, 7, 199, 199]


class _CountingLocation(FileLocation):
    """A file location that counts how often it is brought up to date."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls = 0

    def append_after(self, fetch: Callable[[int], Iterable[ExternalCheckpoint]]) -> int:
        self.calls += 1
        return super().append_after(fetch)


def test_one_commit_with_several_checkpoints_exports_once(
    db: Database, signer: SigningKey, settings: Settings
) -> None:
    outside = _CountingLocation(settings.audit_checkpoint_path)
    log = AuditLog(db, signer, checkpoint_every=3, external=[outside])
    with db.session(Scope.everything()) as s:
        for _ in range(7):
            log.append(s, actor="ana", action="x.read", resource="r", outcome="ok")
        assert outside.calls == 0  # nothing goes out before the commit
    assert (outside.calls, _seqs(outside)) == (1, [3, 6])
    assert log.verify(signer).ok


def test_exports_follow_seq_order_whatever_order_rows_are_stored_in(
    db: Database, signer: SigningKey, tmp_path: Path
) -> None:
    folder = tmp_path / "later"
    outside = FileLocation(folder / "audit-checkpoints.jsonl")
    log = AuditLog(db, signer, checkpoint_every=3, external=[outside])
    fill(log, 10)  # every export fails: the folder does not exist yet
    # An update writes a new row version: PostgreSQL then stores checkpoint 3 after 9.
    sql(db, "UPDATE audit_checkpoints SET key_id = key_id WHERE seq = 3")
    folder.mkdir()
    log.export_checkpoints()
    assert [(r.seq, r.prev_seq) for r in outside.read().records] == [(3, 0), (6, 3), (9, 6)]
    assert log.verify(signer).ok


# -- the attacks of the review --------------------------------------------------------------


def test_deleted_tail_after_the_last_checkpoint_is_named(
    db: Database, log: AuditLog, db_only: AuditLog, signer: SigningKey
) -> None:
    fill(log, 10)  # checkpoints 3, 6, 9
    log.checkpoint_head()  # the timer signs entry 10
    rewind(db, 9)
    assert db_only.verify(signer).ok
    failed(
        log.verify(signer),
        10,
        "the audit log ends at entry 9 but the external checkpoint of ",
    )
    assert str(log.verify(signer).problem).endswith("covers entry 10: entries after 9 were deleted")


def test_deleted_checkpoints_and_truncation_are_named(
    db: Database, log: AuditLog, db_only: AuditLog, signer: SigningKey
) -> None:
    fill(log, 10)
    rewind(db, 4)
    assert db_only.verify(signer).ok
    report = log.verify(signer)
    failed(report, 5, "the audit log ends at entry 4 but the external checkpoint of 20")
    assert str(report.problem).endswith("covers entry 9: entries after 4 were deleted")


def test_wiped_log_is_named(
    db: Database, log: AuditLog, db_only: AuditLog, signer: SigningKey
) -> None:
    fill(log, 10)
    rewind(db, 0)
    assert db_only.verify(signer).ok  # "OK: 0 entries"
    report = log.verify(signer)
    failed(report, 1, "the audit log is empty but the external checkpoint of ")
    assert str(report.problem).endswith("covers entry 9: the whole log was wiped")


def test_rewrite_after_the_last_database_checkpoint_is_named(
    db: Database, log: AuditLog, db_only: AuditLog, signer: SigningKey
) -> None:
    fill(log, 11)  # checkpoints 3, 6, 9
    log.checkpoint_head()  # and 11, outside too
    sql(db, "DELETE FROM audit_checkpoints WHERE seq = 11")
    rewrite_from(db, 10, "mallory")
    assert db_only.verify(signer).ok
    failed(
        log.verify(signer),
        10,
        "entries 10 to 11 were rewritten after being signed: entry 11 does not match the "
        "external checkpoint of ",
    )


def test_rewrite_from_the_first_entry_is_named_from_entry_1(
    db: Database, log: AuditLog, signer: SigningKey, outside: FileLocation
) -> None:
    fill(log, 3)  # checkpoint 3, outside too
    sql(db, "DELETE FROM audit_checkpoints")
    rewrite_from(db, 1, "mallory")
    # A log configured with a long interval does not miss the deleted checkpoint itself.
    lenient = AuditLog(db, signer, checkpoint_every=100, external=[outside])
    assert AuditLog(db, signer, checkpoint_every=100).verify(signer).ok
    failed(
        lenient.verify(signer),
        1,
        "entries 1 to 3 were rewritten after being signed: entry 3 does not match the "
        "external checkpoint of ",
    )


def test_checkpoint_deleted_from_the_database_is_named(
    db: Database, log: AuditLog, db_only: AuditLog, signer: SigningKey
) -> None:
    fill(log, 10)
    log.checkpoint_head()
    sql(db, "DELETE FROM audit_checkpoints WHERE seq = 10")
    assert db_only.verify(signer).ok
    failed(log.verify(signer), 10, "the checkpoint for entry 10 of ")
    assert str(log.verify(signer).problem).endswith("but was deleted from the database")


def test_missing_external_log_is_named(
    db: Database, log: AuditLog, signer: SigningKey, outside: FileLocation
) -> None:
    fill(log, 7)
    outside.path.unlink()
    report = log.verify(signer)
    assert not report.ok
    assert report.problem == (
        f"the database holds 2 signed checkpoints but the external checkpoint log "
        f"{outside.path} is missing or empty: it was deleted, or writing to it has failed "
        "(see the server log)"
    )


def test_forged_or_garbled_external_records_are_named(
    db: Database, log: AuditLog, signer: SigningKey, outside: FileLocation, tmp_path: Path
) -> None:
    fill(log, 7)
    forger = SigningKey(Settings(home=tmp_path / "forger"))
    genuine = outside.read().records[-1]
    forged = ExternalCheckpoint(
        seq=50,
        hash=genuine.hash,
        prev_seq=6,
        key_id=signer.key_id,
        at=genuine.at,
        signature=forger.sign(b"anything"),
    )
    with outside.path.open("a") as handle:
        handle.write(forged.to_json() + "\n")
    failed(
        log.verify(signer),
        50,
        f"the external checkpoint for entry 50 in {outside.path} has an invalid signature "
        f"(key {signer.key_id!r}): it was forged or altered",
    )

    lines = outside.path.read_text().splitlines()
    outside.path.write_text("\n".join([*lines[:-1], "not json"]) + "\n")
    report = log.verify(signer)
    assert not report.ok
    assert report.problem is not None
    assert report.problem.startswith(
        f"an external checkpoint is unreadable: line 3 of {outside.path}"
    )


# -- a second location: S3 ----------------------------------------------------------------


@pytest.mark.s3
def test_checkpoints_in_s3_catch_a_wipe_of_the_database_and_the_home_file(
    db: Database,
    signer: SigningKey,
    outside: FileLocation,
    db_only: AuditLog,
    s3_endpoint: str,  # noqa: F811 (the fixture)
) -> None:
    url = f"s3://{BUCKET}/audit-{secrets.token_hex(6)}/"
    options = {"endpoint_url": s3_endpoint, **CREDENTIALS}
    bucket = ObjectLocation(url, options)
    log = AuditLog(db, signer, checkpoint_every=3, external=[outside, bucket])
    fill(log, 10)
    assert _seqs(bucket) == [3, 6, 9]
    assert _seqs(ObjectLocation(url, options)) == [3, 6, 9]  # as a fresh process sees it
    assert log.verify(signer).ok

    # Someone with the database and this machine, but not the bucket.
    rewind(db, 0)
    outside.path.unlink()
    assert db_only.verify(signer).ok
    report = log.verify(signer)
    failed(report, 1, "the audit log is empty but the external checkpoint of ")
    assert str(report.problem).endswith(f"in {url} covers entry 9: the whole log was wiped")


def test_server_start_writes_checkpoints_the_home_file_lacks(
    db: Database, settings: Settings, signer: SigningKey
) -> None:
    from underlay.platform import Platform

    # A store whose checkpoints predate the external log (or whose writes all failed).
    fill(AuditLog(db, signer, checkpoint_every=3), 7)
    assert not settings.audit_checkpoint_path.exists()
    platform = Platform(
        Settings(
            home=settings.home,
            store={"url": settings.database_url},
            security={"audit_checkpoint_every": 3},
        )
    )
    try:
        platform.start()
        assert _seqs(FileLocation(settings.audit_checkpoint_path))[:2] == [3, 6]
        assert platform.audit.verify(signer).ok
    finally:
        platform.close()


# -- object locations, on fsspec's in-memory file system ------------------------------------


@pytest.fixture
def bucket() -> Iterator[tuple[ObjectLocation, str]]:
    """An object location on fsspec's in-memory file system (the S3 test's code path)."""
    url = f"memory://audit-{secrets.token_hex(6)}/"
    yield ObjectLocation(url, {}), url
    memory = fsspec.filesystem("memory")
    memory.rm("/" + url.removeprefix("memory://").rstrip("/"), recursive=True)


def test_an_object_location_passes_its_storage_options_to_the_file_system(
    tmp_path: Path,
) -> None:
    """``storage_options`` (an S3 endpoint and credentials, in production) reach fsspec: here
    the local file system's ``auto_mkdir``, without which the first object has no folder."""
    url = f"file://{tmp_path}/not/yet/made/"
    assert (
        ObjectLocation(url, {"auto_mkdir": True}).append_after(
            lambda after: [_record(1)] if after == 0 else []
        )
        == 1
    )
    assert _seqs(ObjectLocation(url, {})) == [1]
    with pytest.raises(FileNotFoundError):  # the default: no folders made
        ObjectLocation(f"file://{tmp_path}/other/", {"auto_mkdir": False}).append_after(
            lambda after: [_record(1)]
        )


def test_an_object_location_holds_one_object_per_checkpoint(
    db: Database,
    signer: SigningKey,
    outside: FileLocation,
    db_only: AuditLog,
    bucket: tuple[ObjectLocation, str],
) -> None:
    location, url = bucket
    assert location.name == url
    assert location.read().records == []  # nothing written yet: no folder either
    log = AuditLog(db, signer, checkpoint_every=3, external=[outside, location])
    fill(log, 10)
    assert _seqs(location) == [3, 6, 9]
    memory = fsspec.filesystem("memory")
    root = "/" + url.removeprefix("memory://").rstrip("/")
    names = sorted(Path(p).name for p in memory.find(root))
    assert names == [f"{seq:020d}.json" for seq in (3, 6, 9)]
    assert location.read().records == outside.read().records
    assert memory.cat_file(f"{root}/{3:020d}.json").decode() == outside.read().records[0].to_json()

    asked: list[int] = []

    def fetch(after: int) -> list[ExternalCheckpoint]:
        asked.append(after)
        return []

    empty = ObjectLocation(f"memory://audit-{secrets.token_hex(6)}/", {})
    assert empty.append_after(lambda after: [_record(1), _record(2)] if after == 0 else []) == 2
    assert _seqs(empty) == [1, 2]
    fresh = ObjectLocation(url, {})  # as another process sees it: finds the newest object
    assert fresh.append_after(fetch) == 0
    assert location.append_after(fetch) == 0
    assert asked == [9, 9]
    assert log.checkpoint_head() == 10
    log.export_checkpoints()
    assert _seqs(fresh) == [3, 6, 9, 10]
    assert log.verify(signer).ok

    # Someone with the database and this machine, but not the bucket.
    rewind(db, 0)
    outside.path.unlink()
    assert db_only.verify(signer).ok
    report = log.verify(signer)
    failed(report, 1, "the audit log is empty but the external checkpoint of ")
    assert str(report.problem).endswith(f"in {url} covers entry 10: the whole log was wiped")


def test_an_object_location_reports_misnamed_and_garbled_objects(
    db: Database, signer: SigningKey, bucket: tuple[ObjectLocation, str]
) -> None:
    location, url = bucket
    log = AuditLog(db, signer, checkpoint_every=3, external=[location])
    fill(log, 4)
    memory = fsspec.filesystem("memory")
    root = "/" + url.removeprefix("memory://").rstrip("/")
    third = memory.cat_file(f"{root}/{3:020d}.json")
    memory.pipe_file(f"{root}/notes.txt", b"not a checkpoint")  # not named as one: ignored
    memory.pipe_file(f"{root}/{12:020d}.json", third)
    memory.pipe_file(f"{root}/{13:020d}.json", b"\xff garbled")
    readout = ObjectLocation(url, {}).read()
    assert readout.location == url
    assert [r.seq for r in readout.records] == [3]
    assert readout.unreadable == [
        f"object {root}/{12:020d}.json: it names entry 3",
        f"object {root}/{13:020d}.json: 'utf-8' codec can't decode byte 0xff in position 0: "
        "invalid start byte",
    ]
    report = log.verify(signer)
    failed(report, None, "an external checkpoint is unreadable: object ")
    assert report.problem is not None and report.problem.endswith("it names entry 3")


# -- the timer ----------------------------------------------------------------------------


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_the_checkpoint_loop_signs_the_tail_and_keeps_ticking_after_a_failure(
    db: Database,
    log: AuditLog,
    signer: SigningKey,
    outside: FileLocation,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fill(log, 4)
    with db.session(Scope.everything()) as s:
        head = s.get(AuditHead, 1)
        assert head is not None
        seq, hash_ = head.seq, head.hash
    sql(db, "DELETE FROM audit_head")  # every tick fails until the head is back
    loop = CheckpointLoop(log, 0.02)
    assert (loop.audit, loop.interval_s) == (log, 0.02)
    assert loop._thread.daemon and loop._thread.name == "underlay-audit"
    with caplog.at_level(logging.ERROR, logger="underlay.audit_checkpoints"):
        loop.start()
        try:
            _wait_for(lambda: "audit checkpoint tick failed" in caplog.text, "a failed tick")
            sql(db, "INSERT INTO audit_head (id, seq, hash) VALUES (1, :s, :h)", s=seq, h=hash_)
            _wait_for(lambda: _seqs(outside) == [3, 4], "the tail's checkpoint outside")
        finally:
            loop.stop()
    assert not loop._thread.is_alive()
    ticks = {r.getMessage() for r in caplog.records if r.name == "underlay.audit_checkpoints"}
    assert ticks == {"audit checkpoint tick failed; retrying at the next one"}
    assert log.verify(signer).ok
