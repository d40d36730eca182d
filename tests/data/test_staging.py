"""Uploads a table write stages on disk: removed when the write ends, locked while it runs,
swept at start-up when a killed process left them; a sweep (another worker's) spares a
live upload. The SIGKILL of a real server mid-upload is in test_tables_crash.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import sqlite_url
from underlay.data import folders, staging


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only: staging is about the server's disk, not its database."""
    return sqlite_url(sqlite_template, tmp_path)


class Stalled:
    """An upload that sends ``head``, then holds ``tail`` back until released."""

    def __init__(self, url: str, params: dict[str, Any], head: bytes, tail: bytes) -> None:
        self.release = threading.Event()
        self.response: httpx.Response | None = None
        self._args = url, params, head, tail
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _chunks(self) -> Iterator[bytes]:
        yield self._args[2]
        self.release.wait(30)
        yield self._args[3]

    def _run(self) -> None:
        url, params, _, _ = self._args
        self.response = httpx.put(
            url,
            params=params,
            content=self._chunks(),
            headers={"Authorization": "Bearer " + params.pop("token")},
            timeout=30,
        )

    def finish(self) -> httpx.Response:
        self.release.set()
        self._thread.join(30)
        assert self.response is not None
        return self.response


def _wait_for(condition: Any) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_sweep_spares_live_uploads_and_removes_abandoned_ones(
    server: Any, admin: Any, tmp_path: Path
) -> None:
    admin.create_project("shop")
    tmp = server.settings.home / "tmp"
    url = f"{server.url}/api/v1/projects/shop/tables/t/data"
    file_upload = Stalled(
        url, {"format": "csv", "token": server.admin_token}, b"id,v\n1,a\n", b"2,b\n"
    )
    part = tmp_path / "data" / "0.parquet"
    part.parent.mkdir()
    pq.write_table(pa.table({"id": [7]}), part)
    body = b"".join(folders.frames([("0.parquet", part)]))
    folder_upload = Stalled(
        f"{server.url}/api/v1/projects/shop/tables/p/data",
        {"format": "parquet", "folder": True, "token": server.admin_token},
        body[:20],
        body[20:],
    )
    _wait_for(lambda: len(list(tmp.glob("upload-*"))) == 2)
    live = sorted(tmp.glob("upload-*"))
    # what SIGKILLed uploads leave behind: files and folders nobody holds locked
    (tmp / "upload-killed.csv").write_bytes(b"id,v\n1,a\n")
    (tmp / "upload-killed.d").mkdir()
    (tmp / "upload-killed.d" / staging.LOCK).touch()
    (tmp / "upload-killed.d" / "000000.csv").write_bytes(b"id\n")
    (tmp / "upload-nolock.d").mkdir()
    (tmp / "other.txt").write_bytes(b"not an upload")

    assert staging.sweep(server.settings.home) == 3  # as another worker starting up would
    assert sorted(tmp.glob("upload-*")) == live
    assert (tmp / "other.txt").exists()

    assert file_upload.finish().status_code == 200
    assert folder_upload.finish().status_code == 200
    assert admin.read_table("shop", "t").num_rows == 2
    assert admin.read_table("shop", "p").column("id").to_pylist() == [7]
    assert list(tmp.glob("upload-*")) == []  # each write removed its own


def test_platform_start_sweeps_abandoned_uploads(settings: Any) -> None:
    """Start-up itself clears what a killed process staged."""
    from underlay.platform import Platform

    tmp = staging.folder(settings.home)
    (tmp / "upload-killed.jsonl").write_bytes(b'{"id": 1}\n')
    platform = Platform(settings)
    try:
        platform.start()
    finally:
        platform.close()
    assert list(tmp.iterdir()) == []


def test_a_staged_file_is_locked_until_removed(tmp_path: Path) -> None:
    with staging.staged(tmp_path, ".csv") as (out, path):
        out.write(b"id\n")
        assert staging.sweep(tmp_path) == 0 and path.exists()
    assert not path.exists()
    with staging.staged_folder(tmp_path) as where:
        (where / "a.csv").write_bytes(b"id\n")
        assert staging.sweep(tmp_path) == 0 and where.exists()
    assert not where.exists()
