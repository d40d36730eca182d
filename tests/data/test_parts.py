"""A table write in parts (what write_ray uses), through a real server, without Ray: parts
staged by separate requests become one version through the ordinary write path, or nothing."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from underlay.data import parts
from underlay.data.arrowio import ipc_chunks
from underlay.errors import InvalidInput, NotFound

PROJECT = "shop"


@pytest.fixture
def project(admin: Any) -> str:
    admin.create_project(PROJECT)
    return PROJECT


def _ipc(table: pa.Table) -> bytes:
    return b"".join(bytes(c) for c in ipc_chunks(table.schema, table.to_batches()))


def _start(admin: Any, table: str) -> str:
    write: str = admin._request("POST", f"/projects/{PROJECT}/tables/{table}/parts").json()["write"]
    return write


def _staged(server: Any) -> list[str]:
    return sorted(p.name for p in (server.settings.home / "tmp").glob("parts-*"))


def test_parts_staged_apart_are_committed_as_one_version_with_pii_masked(
    server: Any, admin: Any, project: str
) -> None:
    base = f"/projects/{PROJECT}/tables/people/parts"
    write = _start(admin, "people")
    for index in (2, 0, 1):  # in any order, as tasks finish
        people = pa.table(
            {
                "id": [index * 10 + i for i in range(3)],
                "email": [f"p{index}{i}@example.com" for i in range(3)],
                # a part whose values are all null has a null type: it takes the others'
                "note": pa.nulls(3) if index == 1 else pa.array(["n"] * 3),
            }
        )
        staged = admin._request("PUT", f"{base}/{write}/{index}", content=_ipc(people)).json()
        assert staged["index"] == index and staged["rows"] == 3
    result = admin._request("POST", f"{base}/{write}/commit", json={"parts": [0, 1, 2]}).json()
    assert (result["version"], result["rows_written"]) == (0, 9)
    assert [v.version for v in admin.table_versions(PROJECT, "people")] == [0]
    rows = sorted(admin.read_table(PROJECT, "people").to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == [0, 1, 2, 10, 11, 12, 20, 21, 22]
    assert all(r["email"].startswith("tok_email_") for r in rows)  # masked as any write is
    assert [r["note"] for r in rows] == ["n"] * 3 + [None] * 3 + ["n"] * 3
    assert not _staged(server)
    (entry,) = admin.list_audit(action="table.write", resource=f"project:{PROJECT}/table:people@0")
    assert json.loads(entry.detail)["parts"] == 3


def test_a_commit_names_only_staged_parts_and_ends_the_write(
    server: Any, admin: Any, project: str
) -> None:
    base = f"/projects/{PROJECT}/tables/t/parts"
    write = _start(admin, "t")
    with pytest.raises(InvalidInput, match="no Arrow IPC stream"):
        admin._request("PUT", f"{base}/{write}/0", content=b"not arrow")
    with pytest.raises(InvalidInput, match=r"part\(s\) 0 were never staged: nothing was written"):
        admin._request("POST", f"{base}/{write}/commit", json={"parts": [0]})
    with pytest.raises(NotFound, match="no write in parts"):  # a commit ends the write
        admin._request("DELETE", f"{base}/{write}")
    with pytest.raises(NotFound):
        admin.table_info(PROJECT, "t")  # nothing was written, not even an empty table
    assert not _staged(server)


def test_parts_that_do_not_fit_the_table_write_nothing(
    server: Any, admin: Any, project: str
) -> None:
    admin.write_table(PROJECT, "t", pa.table({"id": [1]}))
    base = f"/projects/{PROJECT}/tables/t/parts"
    write = _start(admin, "t")
    admin._request("PUT", f"{base}/{write}/0", content=_ipc(pa.table({"id": ["text"]})))
    with pytest.raises(InvalidInput, match="id"):
        admin._request("POST", f"{base}/{write}/commit", json={"parts": [0]})
    assert admin.table_info(PROJECT, "t").version == 0
    assert not _staged(server)


def test_a_part_after_the_drop_is_refused_and_a_drop_waits_for_uploads(tmp_path: Path) -> None:
    owner = parts.Owner(1, "t", None)
    write = parts.start(tmp_path, owner)
    body = _ipc(pa.table({"id": [1, 2]}))
    release = threading.Event()

    def slow_body() -> Any:
        yield body[:10]
        release.wait(5)
        yield body[10:]

    uploading = threading.Thread(target=parts.stage, args=(tmp_path, write, owner, 0, slow_body()))
    uploading.start()
    time.sleep(0.2)
    dropped = threading.Thread(target=parts.drop, args=(tmp_path, write, owner))
    dropped.start()
    time.sleep(0.2)
    assert dropped.is_alive()  # waits for the upload under way to end
    release.set()
    uploading.join(5)
    dropped.join(5)
    assert not list((tmp_path / "tmp").iterdir())
    with pytest.raises(NotFound, match="no write in parts"):
        parts.stage(tmp_path, write, owner, 1, [body])
    with pytest.raises(NotFound):  # another project's owner cannot name it either
        parts.stage(tmp_path, parts.start(tmp_path, owner), parts.Owner(2, "t", None), 0, [body])


def test_sweep_removes_writes_idle_past_their_ttl(tmp_path: Path) -> None:
    owner = parts.Owner(1, "t", None)
    idle, busy = parts.start(tmp_path, owner), parts.start(tmp_path, owner)
    parts.stage(tmp_path, busy, owner, 0, [_ipc(pa.table({"id": [1]}))])
    old = time.time() - parts.TTL_S - 60
    folder = tmp_path / "tmp" / f"{parts.PREFIX}{idle}"
    os.utime(folder / parts.OWNER, (old, old))
    os.utime(folder, (old, old))
    assert parts.sweep(tmp_path) == 1
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == [f"{parts.PREFIX}{busy}"]


def test_a_reader_names_its_pieces_and_the_server_checks_them(
    server: Any, admin: Any, project: str
) -> None:
    from underlay.client.loader import _pieces

    for start in (0, 10, 20):  # three files of one row group each
        admin.write_table(PROJECT, "p", pa.table({"id": list(range(start, start + 10))}))
    path = f"/projects/{PROJECT}/tables/p/pieces/raw"

    def ids(**params: Any) -> list[int]:
        stream = _pieces(admin, path, {"version": 2, **params}, ahead=False)
        next(stream)  # the schema
        return [i for batch in stream for i in batch.column("id").to_pylist()]

    files = {p.file: p for p in admin.table_pieces(PROJECT, "p").pieces}
    assert len(files) == 3
    first = {i: ids(pieces=f"{i}:0")[0] for i in files}  # which file holds which rows
    order = sorted(files, key=lambda i: first[i], reverse=True)
    named = ids(pieces=",".join(f"{i}:0" for i in order))
    assert named == list(range(20, 30)) + list(range(10, 20)) + list(range(10))  # as named
    with pytest.raises(InvalidInput, match="the version has 3 files"):
        ids(pieces="7:0")
    with pytest.raises(InvalidInput, match="file 0 has 1 row groups"):
        ids(pieces="0:4")
    with pytest.raises(InvalidInput, match="FILE:GROUP"):
        ids(pieces="0-1")
    with pytest.raises(InvalidInput, match="not both"):
        ids(pieces="0:0", shard="0/2")


def test_a_viewer_can_neither_start_nor_add_to_nor_commit_a_write(
    server: Any, admin: Any, project: str
) -> None:
    from underlay.errors import PermissionDenied

    base = f"/projects/{PROJECT}/tables/t/parts"
    write = _start(admin, "t")
    admin.create_user("vic", password="correct horse battery")
    admin.add_member(PROJECT, "vic", "viewer")
    token = admin.create_token("vic", user="vic").token
    one = _ipc(pa.table({"x": [1]}))
    with server.client(token) as vic:
        for method, path, body in (
            ("POST", base, {}),
            ("PUT", f"{base}/{write}/0", {"content": one}),
            ("POST", f"{base}/{write}/commit", {"json": {"parts": [0]}}),
            ("DELETE", f"{base}/{write}", {}),
        ):
            with pytest.raises(PermissionDenied):
                vic._request(method, path, **body)
    assert _staged(server) and admin.list_tables(PROJECT) == []
