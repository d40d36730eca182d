"""Blobs through real HTTP and the SDK: streaming, integrity, audit, and lock-free uploads."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from underlay.errors import IntegrityFailure, InvalidInput, NotFound


@pytest.fixture
def project(admin):  # type: ignore[no-untyped-def]
    admin.create_project("vision")
    return "vision"


def test_round_trip_of_several_chunks(server, admin, project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(server.settings.blobs.chunk_size * 2 + 12345)
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    blob = admin.upload_blob(project, path)
    assert blob.digest == hashlib.sha256(data).hexdigest()
    assert blob.size == len(data) and blob.name == "weights.bin"
    assert admin.download_blob(project, blob.digest) == data
    again = admin.upload_blob(project, data)  # content-addressed: same blob
    assert again.digest == blob.digest
    assert [b.digest for b in admin.list_blobs(project)] == [blob.digest]


@pytest.mark.parametrize("as_path", [True, False])
def test_progress_callbacks_sum_to_the_blob_size(
    admin, project, tmp_path: Path, as_path: bool
) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    sent: list[int] = []
    blob = admin.upload_blob(project, path if as_path else data, progress=sent.append)
    assert len(sent) > 1 and sum(sent) == blob.size == len(data)
    received: list[int] = []
    assert admin.download_blob(project, blob.digest, progress=received.append) == data
    assert len(received) > 1 and sum(received) == len(data)


def test_download_is_an_audited_sensitive_read(admin, project) -> None:  # type: ignore[no-untyped-def]
    blob = admin.upload_blob(project, b"patient records")
    admin.download_blob(project, blob.digest)
    reads = admin.list_audit(action="blob.read")
    assert [e.resource for e in reads] == [f"project:{project}/blob:{blob.digest}"]


def test_tampered_blob_fails_with_integrity_error(server, admin, project) -> None:  # type: ignore[no-untyped-def]
    blob = admin.upload_blob(project, b"a" * 10_000)
    stored = next(Path(server.settings.blob_url).rglob(blob.digest))
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    stored.write_bytes(bytes(raw))
    with pytest.raises(IntegrityFailure, match=f"blob sha256:{blob.digest}"):
        admin.download_blob(project, blob.digest)
    r = httpx.get(
        f"{server.url}/api/v1/projects/{project}/blobs/{blob.digest}/content",
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    assert r.status_code == 503
    assert r.json()["type"] == "urn:underlay:problem:integrity-failure"


def test_wrong_expected_digest_stores_nothing(server, admin, project) -> None:  # type: ignore[no-untyped-def]
    r = httpx.put(
        f"{server.url}/api/v1/projects/{project}/blobs",
        params={"digest": "0" * 64},
        content=b"payload",
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    assert r.status_code == 400 and "expected sha256:000" in r.json()["detail"]
    assert admin.list_blobs(project) == []
    partials = list((Path(server.settings.blob_url) / ".partial").iterdir())
    assert partials == []


def test_unknown_blob_is_404(admin, project) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFound, match="no blob"):
        admin.download_blob(project, "ab" * 32)
    with pytest.raises(InvalidInput, match="not a SHA-256"):
        admin.read_blob(project, "not-a-digest")


def test_slow_upload_does_not_block_other_writes(server, admin, project) -> None:  # type: ignore[no-untyped-def]
    """While one upload streams, other writers proceed (SQLite's lock is not held)."""
    release = threading.Event()
    sent_first = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"x" * 65536
        sent_first.set()
        release.wait(30)
        yield b"y" * 65536

    result: dict[str, object] = {}

    def upload() -> None:
        with server.client() as c:
            result["blob"] = c.upload_blob(project, body())

    thread = threading.Thread(target=upload)
    thread.start()
    try:
        assert sent_first.wait(10)
        with server.client() as other:
            other._http.timeout = httpx.Timeout(5.0)
            other.create_project("meanwhile")  # would wait for the lock otherwise
    finally:
        release.set()
        thread.join(30)
    assert result["blob"].size == 131072  # type: ignore[attr-defined]
    assert {p.name for p in admin.list_projects()} == {"vision", "meanwhile"}
    assert admin.verify_audit().ok
