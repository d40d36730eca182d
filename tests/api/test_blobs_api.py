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


def test_an_open_file_is_uploaded_from_its_position(admin, project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # a regular file goes up with a Content-Length of what is left from its position
    data = os.urandom(1024 * 1024 + 5)
    path = tmp_path / "tail.bin"
    path.write_bytes(b"header" + data)
    with path.open("rb") as handle:
        handle.seek(6)
        blob = admin.upload_blob(project, handle)
    assert blob.digest == hashlib.sha256(data).hexdigest()
    assert admin.download_blob(project, blob.digest) == data


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


def test_a_refused_upload_leaves_its_unread_body_and_the_server_serves_on(  # type: ignore[no-untyped-def]
    server, admin, project
) -> None:
    """The server reads an upload's body ahead of the worker; a worker that refuses the upload
    before reading it (here a viewer's) stops that reading, and nothing is stored."""
    admin.create_user("vic", password="correct horse battery")
    admin.add_member(project, "vic", "viewer")
    token = admin.create_token("vic", user="vic").token

    def body() -> Iterator[bytes]:
        for _ in range(24):  # three times the read-ahead
            yield b"\7" * (1024 * 1024)

    try:
        r = httpx.put(
            f"{server.url}/api/v1/projects/{project}/blobs",
            content=body(),
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,  # a refusal that never came would time out: not a pass
        )
        assert r.status_code == 403, r.text
    except (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError):  # answered, closed
        pass
    assert admin.list_blobs(project) == []
    assert list((Path(server.settings.blob_url) / ".partial").iterdir()) == []
    data = os.urandom(9 * 1024 * 1024)  # more than the read-ahead, streamed in pieces
    pieces = (data[i : i + 100_000] for i in range(0, len(data), 100_000))
    blob = admin.upload_blob(project, pieces)
    assert admin.download_blob(project, blob.digest) == data


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


# -- short digests ----------------------------------------------------------------------------

# Two contents whose SHA-256 digests share their first 8 hex digits (5de24eb3), found once by
# hashing b"blob-0", b"blob-1", ... until two prefixes met.
TWINS = (b"blob-25881", b"blob-140871")


def test_a_blob_is_named_by_sha256_prefix_and_unique_short_prefixes(admin, project) -> None:  # type: ignore[no-untyped-def]
    blob = admin.upload_blob(project, b"weights v1")
    assert admin.read_blob(project, f"sha256:{blob.digest}").digest == blob.digest
    assert admin.read_blob(project, blob.digest[:8]).digest == blob.digest
    assert admin.download_blob(project, f"sha256:{blob.digest[:12]}") == b"weights v1"
    assert admin.download_blob(project, blob.digest) == b"weights v1"  # the full path unchanged
    reads = admin.list_audit(action="blob.read")
    assert {e.resource for e in reads} == {f"project:{project}/blob:{blob.digest}"}
    admin.delete_blob(project, blob.digest[:10])
    assert admin.list_blobs(project) == []


def test_an_ambiguous_prefix_is_a_conflict_naming_how_many_match(server, admin, project) -> None:  # type: ignore[no-untyped-def]
    digests = [admin.upload_blob(project, data).digest for data in TWINS]
    assert digests[0][:8] == digests[1][:8] != digests[0][:9]
    r = httpx.get(
        f"{server.url}/api/v1/projects/{project}/blobs/{digests[0][:8]}",
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "2 blobs match" in r.json()["detail"]
    assert admin.download_blob(project, digests[1][:9]) == TWINS[1]


def test_short_and_unknown_prefixes_are_problems_not_500s(admin, project) -> None:  # type: ignore[no-untyped-def]
    admin.upload_blob(project, b"something")
    with pytest.raises(InvalidInput, match="at least 8"):
        admin.read_blob(project, "abc1234")
    with pytest.raises(InvalidInput, match="SHA-256"):
        admin.read_blob(project, "sha256:XYZ")
    with pytest.raises(NotFound, match="starts with 00000000"):
        admin.read_blob(project, "00000000")


def test_a_prefix_never_finds_another_projects_blob(admin, project) -> None:  # type: ignore[no-untyped-def]
    admin.create_project("secret")
    theirs = admin.upload_blob("secret", b"their model")
    with pytest.raises(NotFound):
        admin.read_blob(project, theirs.digest[:8])
    with pytest.raises(NotFound):
        admin.download_blob(project, f"sha256:{theirs.digest[:16]}")
    assert admin.read_blob("secret", theirs.digest[:8]).digest == theirs.digest


def test_lineage_blob_refs_accept_sha256_and_short_prefixes(admin, project) -> None:  # type: ignore[no-untyped-def]
    blob = admin.upload_blob(project, b"dataset")
    admin.add_lineage(project, ("blob", f"sha256:{blob.digest}"), "input_of", ("run", "r1"))
    graph = admin.lineage(project, "blob", blob.digest[:8], direction="downstream")
    assert graph.root.id == blob.digest
    assert [(e.src.id, e.dst.id) for e in graph.edges] == [(blob.digest, "r1")]
    with pytest.raises(NotFound):
        admin.add_lineage(project, ("blob", "sha256:00000000"), "input_of", ("run", "r2"))


def test_a_batch_of_small_blobs_is_one_request_and_all_or_nothing(
    admin, project, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    contents = [os.urandom(n) for n in (0, 1, 5000, 1_500_000)]  # more than a JSON body may be
    files = []
    for i, data in enumerate(contents):
        (tmp_path / f"f{i}").write_bytes(data)
        files.append((hashlib.sha256(data).hexdigest(), tmp_path / f"f{i}"))
    # one frame's content does not have the digest it is sent under: nothing is stored
    wrong = [*files[:2], (files[3][0], files[2][1])]
    with pytest.raises(InvalidInput, match="expected sha256:"):
        admin.upload_blobs(project, wrong)
    with pytest.raises(InvalidInput, match="not a SHA-256 hex digest"):
        admin.upload_blobs(project, [("../etc/passwd", files[0][1])])
    assert admin.list_blobs(project) == []
    stored = admin.upload_blobs(project, files)
    assert [(b.digest, b.size) for b in stored] == [
        (d, len(c)) for (d, _), c in zip(files, contents, strict=True)
    ]
    for (digest, _), data in zip(files, contents, strict=True):
        assert admin.download_blob(project, digest) == data
    (entry,) = [e for e in admin.list_audit(action="blob.create") if e.outcome == "ok"]
    assert entry.resource == f"project:{project}/blobs" and '"blobs":4,' in entry.detail
