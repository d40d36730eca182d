"""SIGKILL the server in the middle of a blob upload; after restart the state is consistent.

A real ``underlay up`` process receives a 20 MiB head of a larger upload and then waits for
more. The test kills it with SIGKILL while the encrypted partial file is being written, starts
it again on the same home, and checks: no blob row for the interrupted upload, no file at a
final blob name other than the blobs that completed, the audit chain verifies, SQLite is
intact, and uploading the same content again works and reads back identical.

Crashed writes leave a temporary file under ``blobs/.partial``. A live write holds a lock on
its file, and the kernel drops the lock of a killed process, so start-up removes the leftover
at once (and would spare a live write of another worker); it is never reachable as a blob.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import ServerProcess
from tests.conftest import ADMIN_TOKEN
from underlay.client import Client

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
SENT_BEFORE_KILL = 20 * MiB
TOTAL = 28 * MiB
_DIGEST_NAME = re.compile(r"[0-9a-f]{64}")


def _content() -> bytes:
    """Deterministic, incompressible-looking bytes (so nothing deduplicates by accident)."""
    block = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(32 * 1024))
    return (block * (TOTAL // len(block) + 1))[:TOTAL]


class SlowUpload:
    """Upload ``data`` in a thread: send its first ``head`` bytes, then stall until released."""

    def __init__(self, url: str, project: str, data: bytes, head: int) -> None:
        self.release = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None
        self.response: httpx.Response | None = None
        self._args = (url, project, data, head)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _chunks(self) -> Iterator[bytes]:
        _, _, data, head = self._args
        for start in range(0, head, MiB):
            yield data[start : start + MiB]
            self.sent += MiB
        self.release.wait(60)  # the server dies while we hold the rest back
        yield data[head:]

    def _run(self) -> None:
        url, project, _, _ = self._args
        try:
            self.response = httpx.put(
                f"{url}/api/v1/projects/{project}/blobs",
                params={"name": "big.bin"},
                content=self._chunks(),
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=60,
            )
        except httpx.HTTPError as exc:
            self.error = exc

    def start(self) -> SlowUpload:
        self._thread.start()
        return self

    def finish(self) -> None:
        self.release.set()
        self._thread.join(60)


def _partials(blob_root: Path) -> list[Path]:
    folder = blob_root / ".partial"
    return sorted(folder.iterdir()) if folder.exists() else []


def _wait_for_partial(blob_root: Path, at_least: int, upload: SlowUpload) -> Path:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in _partials(blob_root):
            if path.stat().st_size >= at_least:
                return path
        assert upload.error is None, upload.error
        time.sleep(0.05)
    raise AssertionError(f"no partial file of {at_least} bytes; sent {upload.sent} bytes")


def _final_blob_files(blob_root: Path) -> set[Path]:
    """Every file at a final blob name (``<project>/<xx>/<digest>``)."""
    found = set()
    for path in blob_root.rglob("*"):
        if path.is_file() and ".partial" not in path.relative_to(blob_root).parts:
            found.add(path)
    return found


def test_sigkill_mid_upload_leaves_no_partial_blob(tmp_path: Path) -> None:
    home = tmp_path / "home"
    blob_root = home / "blobs"
    data = _content()
    small = b"a blob that completed before the crash\n"

    server = ServerProcess(home).start()
    try:
        with Client(server.url, ADMIN_TOKEN) as admin:
            admin.create_project("vision")
            kept = admin.upload_blob("vision", small, name="small.txt")
        upload = SlowUpload(server.url, "vision", data, SENT_BEFORE_KILL).start()
        partial = _wait_for_partial(blob_root, 16 * MiB, upload)
        server.kill()
    finally:
        server.stop()
    upload.finish()
    assert upload.response is None, "the upload must not have completed"
    assert upload.error is not None

    # What the crash left on disk: the partial file, and only complete blobs at final names.
    assert partial.exists() or not _partials(blob_root)
    finals = _final_blob_files(blob_root)
    assert {p.name for p in finals} == {kept.digest}
    assert all(_DIGEST_NAME.fullmatch(p.name) for p in finals)

    with ServerProcess(home) as again, Client(again.url, ADMIN_TOKEN) as admin:
        listed = admin.list_blobs("vision")
        assert [(b.digest, b.size) for b in listed] == [(kept.digest, len(small))]
        assert admin.download_blob("vision", kept.digest) == small

        report = admin.verify_audit()
        assert report.ok, report.problem
        assert report.first_bad_seq is None
        created = admin.list_audit(action="blob.create", outcome="ok")
        assert [e.resource for e in created] == [f"project:vision/blob:{kept.digest}"]

        # The killed upload's partial is swept at start-up; nothing reached a final name.
        assert _partials(blob_root) == []
        assert _final_blob_files(blob_root) == finals

        big = admin.upload_blob("vision", data, name="big.bin")
        assert big.digest == hashlib.sha256(data).hexdigest()
        assert big.size == TOTAL
        back = hashlib.sha256()
        for chunk in admin.iter_blob("vision", big.digest):
            back.update(chunk)
        assert back.hexdigest() == big.digest
        assert {b.digest for b in admin.list_blobs("vision")} == {kept.digest, big.digest}
        assert admin.verify_audit().ok

    with sqlite3.connect(home / "underlay.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = conn.execute("SELECT digest, size FROM blobs ORDER BY size").fetchall()
    assert rows == [(kept.digest, len(small)), (big.digest, TOTAL)]
    assert {p.name for p in _final_blob_files(blob_root)} == {kept.digest, big.digest}
