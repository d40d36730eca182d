"""Datasets of files through real HTTP and the SDK, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from underlay.data.manifest import FileEntry, check_path, manifest_digest
from underlay.errors import Conflict, InvalidInput, NotFound


@pytest.fixture
def project(admin: Any) -> str:
    admin.create_project("vision")
    return "vision"


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_push_pull_round_trip_with_versions_and_dedup(
    admin: Any, project: str, tmp_path: Path
) -> None:
    first = {"a.txt": b"alpha", "img/1.png": os.urandom(3000), "img/2.png": b"same"}
    src = _tree(tmp_path / "v1", first)
    v1 = admin.push_dataset(project, "images", src, message="first")
    assert (v1.version, v1.created, v1.file_count) == (1, True, 3)
    assert v1.total_size == sum(len(d) for d in first.values())
    blobs_after_v1 = len(admin.list_blobs(project))
    assert blobs_after_v1 == 3

    # the same folder again: no new version, nothing uploaded
    again = admin.push_dataset(project, "images", src)
    assert (again.version, again.created) == (1, False)

    # change one file, add one, remove one; a copy of existing content is stored once
    (src / "a.txt").write_bytes(b"alpha v2")
    (src / "img" / "2.png").unlink()
    (src / "copy.png").write_bytes(b"same")
    v2 = admin.push_dataset(project, "images", src, message="second")
    assert (v2.version, v2.created) == (2, True)
    assert len(admin.list_blobs(project)) == blobs_after_v1 + 1  # only "alpha v2" is new

    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    admin.pull_dataset(project, "images", out1, version=1)
    admin.pull_dataset(project, "images", out2)
    assert _read_tree(out1) == first
    assert _read_tree(out2) == _read_tree(src)

    versions = admin.dataset_versions(project, "images")
    assert [(v.version, v.message) for v in versions] == [(2, "second"), (1, "first")]
    change = admin.diff_dataset(project, "images", 1, 2)
    assert [f.path for f in change.added] == ["copy.png"]
    assert [f.path for f in change.removed] == ["img/2.png"]
    assert [c.path for c in change.changed] == ["a.txt"]
    assert change.changed[0].before.digest == _sha(b"alpha")
    assert change.changed[0].after.digest == _sha(b"alpha v2")
    (listed,) = admin.list_datasets(project)
    assert (listed.name, listed.latest_version, listed.file_count) == ("images", 2, 3)


def test_pull_leaves_correct_files_and_replaces_wrong_ones(
    admin: Any, project: str, tmp_path: Path
) -> None:
    src = _tree(tmp_path / "src", {"x.bin": b"x" * 100, "y.bin": b"y" * 100})
    admin.push_dataset(project, "d", src)
    out = _tree(tmp_path / "out", {"x.bin": b"x" * 100, "y.bin": b"tampered!" * 11})
    before = (out / "x.bin").stat().st_mtime_ns
    admin.pull_dataset(project, "d", out)
    assert _read_tree(out) == _read_tree(src)
    assert (out / "x.bin").stat().st_mtime_ns == before  # already right: not rewritten
    assert not list(out.glob(".*.part"))


def test_file_listing_pages_through_a_large_version(
    admin: Any, project: str, tmp_path: Path
) -> None:
    files = {f"f{i:04d}.txt": str(i).encode() for i in range(120)}
    admin.push_dataset(project, "many", _tree(tmp_path / "many", files))
    listed = list(admin.dataset_files(project, "many", 1, page=50))
    assert [f.path for f in listed] == sorted(files)
    assert all(f.digest == _sha(files[f.path]) for f in listed)


def test_concurrent_pushes_get_distinct_versions(
    admin: Any, project: str, tmp_path: Path, server: Any
) -> None:
    folders = [_tree(tmp_path / f"s{i}", {"n.txt": f"{i}".encode()}) for i in range(4)]

    def push(folder: Path) -> int:
        with server.client() as c:
            return int(c.push_dataset(project, "race", folder).version)

    with ThreadPoolExecutor(4) as pool:
        numbers = sorted(pool.map(push, folders))
    assert numbers == [1, 2, 3, 4]


def test_concurrent_uploads_make_one_version_and_progress_sums_to_the_total(
    admin: Any, project: str, tmp_path: Path
) -> None:
    # one file larger than the server's read-ahead of an upload body (8 MiB), small ones,
    # and a copy of one of them: stored once, counted once
    files = {f"part/{i}.bin": os.urandom(1000 * (i + 1)) for i in range(12)}
    files["big.bin"] = os.urandom(9 * 1024 * 1024 + 5)
    files["copy.bin"] = files["part/3.bin"]
    calls: list[tuple[int, int]] = []
    src = _tree(tmp_path / "src", files)
    version = admin.push_dataset(
        project, "mixed", src, workers=4, progress=lambda d, t: calls.append((d, t))
    )
    assert (version.version, version.created, version.file_count) == (1, True, len(files))
    assert [v.version for v in admin.dataset_versions(project, "mixed")] == [1]
    unique = sum(len(d) for k, d in files.items() if k != "copy.bin")
    assert calls[0] == (0, unique) and calls[-1] == (unique, unique)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(admin.list_blobs(project)) == len(files) - 1
    admin.pull_dataset(project, "mixed", tmp_path / "out")
    assert _read_tree(tmp_path / "out") == _read_tree(src)


def test_uploads_go_largest_first(admin: Any, project: str, tmp_path: Path) -> None:
    files = {"a.bin": b"a" * 10, "b.bin": b"b" * 3000, "c.bin": b"c" * 200, "d.bin": b"d"}
    admin.push_dataset(project, "order", _tree(tmp_path / "src", files), workers=1)
    newest_first = [b.size for b in admin.list_blobs(project)]
    assert newest_first == [1, 10, 200, 3000]


def test_a_failed_upload_among_concurrent_ones_leaves_no_version(
    admin: Any, project: str, tmp_path: Path
) -> None:
    files = {f"f{i}.bin": os.urandom(50_000 + i) for i in range(8)}
    src = _tree(tmp_path / "src", files)

    def change_one_after_hashing(done: int, _total: int) -> None:
        if done == 0:  # hashed already: its upload arrives with another digest
            (src / "f5.bin").write_bytes(os.urandom(50_005))

    with pytest.raises(InvalidInput, match="expected sha256:"):
        admin.push_dataset(project, "broken", src, workers=4, progress=change_one_after_hashing)
    assert admin.list_datasets(project) == []
    # the next push of the folder as it is now succeeds, in one version
    version = admin.push_dataset(project, "broken", src, workers=4)
    assert (version.version, version.file_count) == (1, 8)


def test_commit_refuses_files_that_are_not_blobs_of_the_project(
    server: Any, admin: Any, project: str
) -> None:
    admin.create_project("other")
    blob = admin.upload_blob("other", b"elsewhere")  # exists, but in another project
    url = f"{server.url}/api/v1/projects/{project}/datasets/d/versions"
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    body = {"files": [{"path": "a", "digest": blob.digest, "size": 9}]}
    r = httpx.post(url, json=body, headers=headers)
    assert r.status_code == 400
    assert "name no blob of this project" in r.json()["detail"]
    mine = admin.upload_blob(project, b"mine")
    body = {"files": [{"path": "a", "digest": mine.digest, "size": 999}]}
    r = httpx.post(url, json=body, headers=headers)
    assert r.status_code == 400 and "says 999 bytes but its blob holds 4" in r.json()["detail"]
    with pytest.raises(NotFound):
        admin.read_dataset(project, "d")  # nothing was created by the refused pushes


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../up", "a/../../b", "a//b", "./a", "a\\b", "a\x00b", "a\nb", ""]
)
def test_unsafe_manifest_paths_are_refused(
    server: Any, admin: Any, project: str, path: str
) -> None:
    mine = admin.upload_blob(project, b"mine")
    r = httpx.post(
        f"{server.url}/api/v1/projects/{project}/datasets/d/versions",
        json={"files": [{"path": path, "digest": mine.digest, "size": 4}]},
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    assert r.status_code in (400, 422), r.text
    with pytest.raises(InvalidInput):
        check_path(path)


def test_a_blob_a_version_holds_cannot_be_deleted(admin: Any, project: str, tmp_path: Path) -> None:
    admin.push_dataset(project, "d", _tree(tmp_path / "s", {"k": b"kept"}))
    with pytest.raises(Conflict, match="still held"):
        admin.delete_blob(project, _sha(b"kept"))
    out = tmp_path / "out"
    admin.pull_dataset(project, "d", out)
    assert (out / "k").read_bytes() == b"kept"
    admin.delete_dataset(project, "d")
    admin.delete_blob(project, _sha(b"kept"))  # nothing holds it now
    with pytest.raises(NotFound):
        admin.read_dataset(project, "d")


def test_outsiders_get_404_for_everything(
    server: Any, admin: Any, project: str, tmp_path: Path
) -> None:
    admin.push_dataset(project, "d", _tree(tmp_path / "s", {"k": b"secret"}))
    admin.create_user("eve", password="correct horse battery")
    admin.create_project("eves")
    admin.add_member("eves", "eve", "admin")
    eve_token = admin.create_token("eve", user="eve").token
    with server.client(eve_token) as eve:
        for call in (
            lambda: eve.list_datasets(project),
            lambda: eve.read_dataset(project, "d"),
            lambda: eve.dataset_versions(project, "d"),
            lambda: eve.dataset_version(project, "d", 1),
            lambda: list(eve.dataset_files(project, "d")),
            lambda: eve.diff_dataset(project, "d", 1),
            lambda: eve.push_dataset(project, "d", tmp_path / "s"),
            lambda: eve.delete_dataset(project, "d"),
        ):
            with pytest.raises(NotFound) as caught:
                call()
            assert "vision" in str(caught.value) and "secret" not in str(caught.value)


def test_a_viewer_reads_but_cannot_push(
    server: Any, admin: Any, project: str, tmp_path: Path
) -> None:
    from underlay.errors import PermissionDenied

    src = _tree(tmp_path / "s", {"k": b"v"})
    admin.push_dataset(project, "d", src)
    admin.create_user("vic", password="correct horse battery")
    admin.add_member(project, "vic", "viewer")
    token = admin.create_token("vic", user="vic").token
    with server.client(token) as vic:
        vic.pull_dataset(project, "d", tmp_path / "out")
        assert (tmp_path / "out" / "k").read_bytes() == b"v"
        with pytest.raises(PermissionDenied):
            vic.push_dataset(project, "d", src)


def test_pushes_and_deletes_are_audited(admin: Any, project: str, tmp_path: Path) -> None:
    admin.push_dataset(project, "d", _tree(tmp_path / "s", {"k": b"v"}))
    admin.delete_dataset(project, "d")
    actions = [(e.action, e.resource) for e in admin.list_audit(project=project, limit=1000)]
    assert ("dataset.version.create", f"project:{project}/dataset:d@1") in actions
    assert ("dataset.delete", f"project:{project}/dataset:d") in actions


def test_deleting_the_project_removes_its_datasets(
    admin: Any, project: str, tmp_path: Path
) -> None:
    admin.push_dataset(project, "d", _tree(tmp_path / "s", {"k": b"v", "j": b"w"}))
    admin.delete_project(project)
    admin.create_project(project)  # same name, new project: nothing of the old one shows
    assert admin.list_datasets(project) == []


def test_manifest_digest_depends_on_content_not_order() -> None:
    a = [FileEntry("x", "0" * 64, 1), FileEntry("y", "1" * 64, 2)]
    assert manifest_digest(a) == manifest_digest(list(reversed(a)))
    assert manifest_digest(a) != manifest_digest([FileEntry("x", "0" * 64, 1)])
    assert manifest_digest(a) != manifest_digest([a[0], FileEntry("y", "2" * 64, 2)])


def test_concurrent_creates_of_one_name_give_one_dataset_and_conflicts(
    project: str, server: Any
) -> None:
    def create(_: int) -> str:
        with server.client() as c:
            try:
                c.create_dataset(project, "once")
                return "created"
            except Conflict:
                return "conflict"

    with ThreadPoolExecutor(4) as pool:
        outcomes = sorted(pool.map(create, range(4)))
    assert outcomes == ["conflict", "conflict", "conflict", "created"]


@pytest.mark.parametrize("path", ["../escape", "a/../../escape", "/abs", "a\\..\\b"])
def test_pull_never_writes_outside_its_folder_whatever_a_server_sends(
    tmp_path: Path, path: str
) -> None:
    from underlay.client.data import _target

    with pytest.raises(InvalidInput):
        _target(tmp_path / "out", path)
    assert _target(tmp_path / "out", "a/b.txt") == tmp_path / "out" / "a" / "b.txt"


def test_a_bad_name_is_refused_before_anything_is_uploaded(
    admin: Any, project: str, tmp_path: Path
) -> None:
    src = _tree(tmp_path / "s", {"a.txt": b"never sent"})
    with pytest.raises(InvalidInput, match="dataset name"):
        admin.push_dataset(project, "Bad Name", src)
    assert admin.list_blobs(project) == []


def test_an_unchanged_manifest_answers_200_as_documented(server: Any, project: str) -> None:
    """A commit equal to the latest version answers 200 with it (201 creates): both are in
    the OpenAPI document, so clients and schemathesis know them."""
    from tests.conftest import ADMIN_TOKEN

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    url = f"{server.url}/api/v1/projects/{project}/datasets/d/versions"
    first = httpx.post(url, json={"files": [], "message": ""}, headers=headers, timeout=60)
    again = httpx.post(url, json={"files": [], "message": ""}, headers=headers, timeout=60)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["version"] == first.json()["version"]
    spec = httpx.get(f"{server.url}/api/v1/openapi.json", timeout=120).json()
    documented = spec["paths"]["/api/v1/projects/{project}/datasets/{name}/versions"]["post"]
    assert {"200", "201"} <= set(documented["responses"])
