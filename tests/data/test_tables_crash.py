"""SIGKILL ``underlay up`` in the middle of a table ingest; after restart the table is whole.

A real server process holds a table at its first version. It is then killed with SIGKILL

(a) while a big CSV upload is still streaming in (the server has staged part of it), and
(b) as soon as delta-rs committed the ingest's next Delta version, before the platform could
    publish it (the test polls ``_delta_log/`` and kills the moment the next entry appears;
    the kill can land after the publication instead, so each round accepts either state and
    checks that it is whole).

After each restart on the same home: readers see the published version with its row count;
every file the Delta log's live versions reference exists and reads; the next write succeeds
and is the newest published version; ``underlay audit verify`` (the CLI) passes.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli.conftest import CLI, ServerProcess, clean_env, run_cli
from tests.conftest import ADMIN_TOKEN
from underlay.client import Client
from underlay.errors import NotFound

pytestmark = pytest.mark.slow

PROJECT, TABLE = "shop", "events"
FIRST_ROWS = 1000
HEADER = b"id,amount,city\n"


def _rows(start: int, count: int) -> bytes:
    cities = ("London", "Paris", "Lagos", "Lima")
    return b"".join(
        f"{i},{i * 0.25:.2f},{cities[i % 4]}\n".encode() for i in range(start, start + count)
    )


def _kill_tree(server: ServerProcess) -> None:
    """SIGKILL the server and any process it started, all at once: a power cut."""
    assert server.proc is not None
    parent = psutil.Process(server.proc.pid)
    procs = [parent, *parent.children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    server.proc.wait(15)


def _env(url: str, tmp_path: Path) -> dict[str, str]:
    return clean_env(
        UNDERLAY_URL=url, UNDERLAY_TOKEN=ADMIN_TOKEN, UNDERLAY_HOME=str(tmp_path / "cli-home")
    )


def _location(home: Path) -> Path:
    (log,) = (home / "tables").glob("*/*/_delta_log")
    return log.parent


def _delta_versions(location: Path) -> list[int]:
    return sorted(int(p.stem) for p in (location / "_delta_log").glob("*.json"))


def _check_whole(
    url: str, tmp_path: Path, location: Path, published: int, rows: int
) -> tuple[int, int]:
    """Readers, files, the next write and the audit chain after a restart; returns the
    (version, rows) the table holds after the next write."""
    from deltalake import DeltaTable

    with Client(url, ADMIN_TOKEN) as admin:
        info = admin.table_info(PROJECT, TABLE)
        assert info.version == published
        assert admin.read_table(PROJECT, TABLE).num_rows == rows
        assert admin.sql(PROJECT, f"select count(*) as n from {TABLE}").to_pylist() == [{"n": rows}]
        # every live version of the Delta log (the published one, and any newer version a
        # crashed write committed) references only files that exist and read
        latest = DeltaTable(str(location)).version()
        for version in {published, latest}:
            delta = DeltaTable(str(location), version=version)
            for uri in delta.file_uris():
                path = Path(uri.removeprefix("file://"))
                assert path.is_file(), f"version {version} references missing {path}"
                pq.read_metadata(path)
            delta.to_pyarrow_table()
        # the next write goes through and is the newest published version
        extra = pa.table({"id": [-1, -2], "amount": [0.5, 1.5], "city": ["Oslo", "Oslo"]})
        result = admin.write_table(PROJECT, TABLE, extra)
        assert result.version > published and result.num_rows == rows + 2
        assert admin.table_versions(PROJECT, TABLE)[0].version == result.version
        assert admin.read_table(PROJECT, TABLE).num_rows == rows + 2
    verified = run_cli("audit", "verify", env=_env(url, tmp_path))
    assert verified.returncode == 0, verified.stderr
    assert "audit log OK" in verified.stdout
    return result.version, rows + 2


class StalledUpload:
    """A CSV upload that sends ``head`` bytes, then holds the rest back until released."""

    def __init__(self, url: str, head: bytes) -> None:
        self.release = threading.Event()
        self.error: BaseException | None = None
        self.response: httpx.Response | None = None
        self._url, self._head = url, head
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _chunks(self) -> Iterator[bytes]:
        for start in range(0, len(self._head), 1 << 20):
            yield self._head[start : start + (1 << 20)]
        self.release.wait(60)
        yield _rows(10**8, 10)

    def _run(self) -> None:
        try:
            self.response = httpx.put(
                f"{self._url}/api/v1/projects/{PROJECT}/tables/{TABLE}/data",
                params={"format": "csv"},
                content=self._chunks(),
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=60,
            )
        except httpx.HTTPError as error:
            self.error = error

    def finish(self) -> None:
        self.release.set()
        self._thread.join(60)


def _staged(home: Path) -> int:
    folder = home / "tmp"
    return max((p.stat().st_size for p in folder.glob("*.csv")), default=0)


def test_sigkill_during_ingest_leaves_the_table_at_its_published_version(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    first = tmp_path / "first.csv"
    first.write_bytes(HEADER + _rows(0, FIRST_ROWS))
    big = tmp_path / "big.csv"
    big.write_bytes(HEADER + _rows(FIRST_ROWS, 400_000))

    server = ServerProcess(home).start()
    try:
        with Client(server.url, ADMIN_TOKEN) as admin:
            admin.create_project(PROJECT)
        done = run_cli(
            "tables", "ingest", TABLE, str(first), "-p", PROJECT, env=_env(server.url, tmp_path)
        )
        assert done.returncode == 0, done.stderr
        location = _location(home)

        # (a) killed while the upload streams: the server has staged 8 MiB of it
        head = HEADER + _rows(FIRST_ROWS, 400_000)
        upload = StalledUpload(server.url, head)
        deadline = time.monotonic() + 60
        while _staged(home) < len(head) and time.monotonic() < deadline:
            assert upload.error is None, upload.error
            time.sleep(0.01)
        assert _staged(home) == len(head), "the server never staged the upload's head"
        _kill_tree(server)
    finally:
        server.stop()
    upload.finish()
    assert upload.response is None and upload.error is not None
    assert _delta_versions(location) == [0]

    server = ServerProcess(home).start()
    try:
        published, rows = _check_whole(server.url, tmp_path, location, 0, FIRST_ROWS)
    finally:
        server.stop()

    # (b) killed right after the next Delta commit: before or after its publication
    outcomes = []
    for _ in range(4):
        server = ServerProcess(home).start()
        try:
            nxt = _delta_versions(location)[-1] + 1
            ingest = subprocess.Popen(
                [*CLI, "tables", "ingest", TABLE, str(big), "-p", PROJECT],
                env=_env(server.url, tmp_path),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            entry = location / "_delta_log" / f"{nxt:020d}.json"
            deadline = time.monotonic() + 120
            while not entry.exists():
                assert ingest.poll() is None, ingest.communicate()
                assert time.monotonic() < deadline, "the ingest never committed"
                time.sleep(0.001)
            _kill_tree(server)
            _, err = ingest.communicate(timeout=60)
        finally:
            server.stop()
        if ingest.returncode == 0:  # the kill landed after the publication
            outcomes.append("published")
            published, rows = nxt, rows + 400_000
        else:
            outcomes.append("unpublished")
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        server = ServerProcess(home).start()
        try:
            with Client(server.url, ADMIN_TOKEN) as admin:
                if admin.table_info(PROJECT, TABLE).version == nxt and outcomes[-1] != "published":
                    # published, but the kill cut the answer: the write did go through
                    outcomes[-1] = "published (answer lost)"
                    published, rows = nxt, rows + 400_000
            published, rows = _check_whole(server.url, tmp_path, location, published, rows)
        finally:
            server.stop()
        if "unpublished" in outcomes:
            break
    print("outcomes of the kills after the commit:", outcomes)


@pytest.mark.s3
def test_workers_of_one_server_queue_their_writes_on_s3(
    tmp_path: Path, s3_tables_endpoint: str
) -> None:
    """`underlay up --workers 2` with the tables on S3: concurrent appends to one table, served
    by both processes, each land as their own published version, none lost; the table's
    lock lives in the home the workers share."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from tests.data.conftest import s3_tables_config

    data = s3_tables_config(s3_tables_endpoint)

    class S3Server(ServerProcess):
        def extra_env(self) -> dict[str, str]:
            return {
                "UNDERLAY_DATA__TABLES_URL": data["tables_url"],
                "UNDERLAY_DATA__STORAGE_OPTIONS": json.dumps(data["storage_options"]),
                "UNDERLAY_COMPUTE__LOCAL_AGENT": "false",
            }

    home = tmp_path / "home"
    server = S3Server(home, "--workers", "2").start(ready_within_s=120)  # spawns: slow to start
    try:
        with Client(server.url, ADMIN_TOKEN) as admin:
            admin.create_project(PROJECT)
            admin.write_table(PROJECT, TABLE, pa.table({"id": [0]}))

            def append(i: int) -> int:
                with Client(server.url, ADMIN_TOKEN) as c:
                    return c.write_table(PROJECT, TABLE, pa.table({"id": [i]})).version

            with ThreadPoolExecutor(6) as pool:
                versions = list(pool.map(append, range(1, 13)))
            assert len(set(versions)) == 12
            ids = admin.read_table(PROJECT, TABLE).column("id").to_pylist()
            assert sorted(ids) == list(range(13))
            listed = [v.version for v in admin.table_versions(PROJECT, TABLE)]
            assert sorted(listed) == sorted([0, *versions])
    finally:
        server.stop()
    assert list((home / "locks" / "tables").glob("*/*.lock"))
    assert not (home / "tables").exists()  # nothing of the table went to the local disk


def test_uploads_staged_by_a_killed_server_are_gone_after_its_restart(tmp_path: Path) -> None:
    """SIGKILL while a file upload and a folder upload are staged: the staged files outlive
    the process (nothing could remove them), and the restarted server's sweep removes them."""
    from underlay.data import folders

    home = tmp_path / "home"
    server = ServerProcess(home).start()
    part = tmp_path / "in" / "a.csv"
    part.parent.mkdir()
    part.write_bytes(HEADER + _rows(0, 1000))
    framed = b"".join(folders.frames([("a.csv", part)]))
    try:
        with Client(server.url, ADMIN_TOKEN) as admin:
            admin.create_project(PROJECT)
        upload = StalledUpload(server.url, HEADER + _rows(0, 1000))
        folder = httpx.Client(base_url=f"{server.url}/api/v1", timeout=60)
        release = threading.Event()

        def held_back() -> Iterator[bytes]:
            yield framed[:-100]
            release.wait(60)
            yield framed[-100:]

        def send() -> None:
            with contextlib.suppress(httpx.HTTPError):
                folder.put(
                    f"/projects/{PROJECT}/tables/folder/data",
                    params={"format": "csv", "folder": True},
                    content=held_back(),
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                )

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        staged = home / "tmp"
        deadline = time.monotonic() + 60
        while len(list(staged.glob("upload-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert {p.suffix for p in staged.glob("upload-*")} == {".csv", ".d"}
        _kill_tree(server)
    finally:
        server.stop()
    upload.finish()
    release.set()
    sender.join(60)
    folder.close()
    assert len(list((home / "tmp").glob("upload-*"))) == 2  # the kill left them

    server = ServerProcess(home).start()
    try:
        assert list((home / "tmp").glob("upload-*")) == []
        with Client(server.url, ADMIN_TOKEN) as admin:
            assert admin.write_table(PROJECT, TABLE, part.parent).rows_written == 1000
    finally:
        server.stop()


def test_a_first_write_killed_midway_leaves_no_empty_table_and_spares_live_ones(
    tmp_path: Path,
) -> None:
    """SIGKILL during a table's first write: the table row was committed before the upload
    streamed, so it outlives the process. Another server process starting on the same home
    meanwhile (a worker of `up --workers N`) spares it: its writer is alive. After the kill,
    the next start removes it (audited), and the name can be written again from version 0."""
    home = tmp_path / "home"
    server = ServerProcess(home).start()
    head = HEADER + _rows(0, 1000)
    try:
        with Client(server.url, ADMIN_TOKEN) as admin:
            admin.create_project(PROJECT)
        upload = StalledUpload(server.url, head)
        deadline = time.monotonic() + 60
        while _staged(home) < len(head) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _staged(home) == len(head), "the server never staged the upload's head"
        with ServerProcess(home) as other, Client(other.url, ADMIN_TOKEN) as admin:
            # the other process's start-up sweep ran: the live first write keeps its table
            assert [t.name for t in admin.list_tables(PROJECT)] == [TABLE]
        _kill_tree(server)
    finally:
        server.stop()
    upload.finish()
    assert upload.response is None

    server = ServerProcess(home).start()
    try:
        with Client(server.url, ADMIN_TOKEN) as admin:
            assert admin.list_tables(PROJECT) == []
            with pytest.raises(NotFound):
                admin.table_info(PROJECT, TABLE)
            entries = admin.list_audit(action="table.delete")
            assert [(e.actor, e.resource) for e in entries] == [
                ("system", f"project:{PROJECT}/table:{TABLE}")
            ]
            again = admin.write_table(PROJECT, TABLE, pa.table({"id": [1, 2]}))
            assert (again.version, again.num_rows) == (0, 2)
        verified = run_cli("audit", "verify", env=_env(server.url, tmp_path))
        assert verified.returncode == 0, verified.stderr
    finally:
        server.stop()
