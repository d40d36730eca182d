"""The blob store contract against an S3-compatible server (moto, on 127.0.0.1).

The same tests as the local folder (:class:`tests.test_blobs.BlobStoreContract`), through the same
code: only the ``blobs`` settings differ.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import fsspec
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import add_project
from tests.moto_server import MotoProcess
from tests.test_blobs import CHUNK, BlobStoreContract, Ops, _data, _sha
from underlay.blobs import BlobStore
from underlay.config import Settings, ensure_home
from underlay.crypto import Keyring
from underlay.errors import Unavailable
from underlay.store import Database

pytestmark = pytest.mark.s3

BUCKET = "underlay-test"
CREDENTIALS = {"key": "testing", "secret": "testing"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free local port, with one bucket."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["key"],
        aws_secret_access_key=CREDENTIALS["secret"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    client.close()
    try:
        yield endpoint
    finally:
        server.stop()


class TestS3BlobStore(BlobStoreContract):
    @pytest.fixture
    def blob_config(self, s3_endpoint: str) -> dict[str, Any]:
        return {
            "url": f"s3://{BUCKET}/{secrets.token_hex(6)}",  # a fresh prefix per test
            "storage_options": {"endpoint_url": s3_endpoint, **CREDENTIALS},
        }


# -- blobs larger than one multipart part ----------------------------------------------------
# The contract above uses blobs of a few hundred KiB: one PUT each. These go through S3's
# multipart upload (parts of 5 MiB, the smallest S3 allows), as every real model file does.

PART = 5 * 1024 * 1024


@pytest.fixture
def big_ops(tmp_path: Path, s3_endpoint: str) -> Iterator[Ops]:
    """A store on S3 writing 5 MiB parts (on SQLite: the parts are what is under test)."""
    settings = Settings(
        home=tmp_path / "home",
        blobs={
            "chunk_size": CHUNK,
            "url": f"s3://{BUCKET}/{secrets.token_hex(6)}",
            "storage_options": {"endpoint_url": s3_endpoint, **CREDENTIALS},
        },
    )
    ensure_home(settings)
    db = Database(settings.database_url)
    db.migrate(lock_dir=settings.home)
    # fsspec hands every user of these options one cached S3FileSystem: the store's too. Its
    # part size is not a setting of ours (the options are strings), so set it on the instance.
    fs, _ = fsspec.core.url_to_fs(settings.blob_url, **settings.blobs.storage_options)
    fs.default_block_size = PART
    try:
        yield Ops(BlobStore(settings, Keyring(settings)), db, fs)
    finally:
        db.dispose()


def test_a_blob_of_several_parts_round_trips_and_is_stored_encrypted(
    big_ops: Ops, caplog: pytest.LogCaptureFixture
) -> None:
    project = add_project(big_ops.db, "p")
    data = _data(2 * PART + 17 * CHUNK + 3, seed=7)
    with caplog.at_level(logging.INFO, logger="werkzeug"):  # moto's request log
        blob = big_ops.put(project, data, name="model.bin")
    parts = [r for r in caplog.messages if "PUT " in r and "partNumber=" in r]
    assert len(parts) == 3, parts  # the partial was written as a three-part upload
    assert (blob.digest, blob.size) == (_sha(data), len(data))
    location = big_ops.store.location(project, blob.digest)
    assert big_ops.fs.info(location)["size"] == blob.stored_size
    stored = big_ops.raw(project, blob.digest)
    assert data[:4096] not in stored and data[-4096:] not in stored
    assert big_ops.read(project, blob.digest) == data
    assert big_ops.files() == [location]


def test_a_write_cut_off_after_parts_were_uploaded_leaves_nothing(
    big_ops: Ops, s3_endpoint: str
) -> None:
    project = add_project(big_ops.db, "p")

    def source() -> Iterator[bytes]:
        for i in range(2 * PART // CHUNK + 1):  # two parts sent, the third under way
            yield _data(CHUNK, seed=i)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError, match="client went away"):
        big_ops.put(project, source())
    assert big_ops.rows(project) == []
    assert big_ops.files() == []
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=CREDENTIALS["key"],
        aws_secret_access_key=CREDENTIALS["secret"],
        region_name="us-east-1",
    )
    try:
        pending = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    finally:
        client.close()
    assert pending == [], "an unfinished multipart upload was left behind"
    assert big_ops.put(project, _data(CHUNK)).size == CHUNK  # and the store writes on


# -- the S3 server killed mid-upload -----------------------------------------------------------
# Here the server is a process of its own (tests.moto_server), so it can be SIGKILLed and started
# again on its port. It comes back empty (moto holds its objects in memory); its bucket is made
# again, as a real store would still hold it.


@contextlib.contextmanager
def _store_on(tmp_path: Path, endpoint: str) -> Iterator[Ops]:
    """A store on the S3 server at ``endpoint`` writing parts of PART bytes (on SQLite)."""
    settings = Settings(
        home=tmp_path / "home",
        blobs={
            "chunk_size": CHUNK,
            "url": f"s3://{BUCKET}/{secrets.token_hex(6)}",
            "storage_options": {"endpoint_url": endpoint, **CREDENTIALS},
        },
    )
    ensure_home(settings)
    db = Database(settings.database_url)
    db.migrate(lock_dir=settings.home)
    fs, _ = fsspec.core.url_to_fs(settings.blob_url, **settings.blobs.storage_options)
    fs.default_block_size = PART  # as in big_ops: the part size is set on the cached instance
    try:
        yield Ops(BlobStore(settings, Keyring(settings)), db, fs)
    finally:
        db.dispose()


@pytest.fixture
def moto() -> Iterator[MotoProcess]:
    server = MotoProcess().start(BUCKET)
    try:
        yield server
    finally:
        server.stop()


def _local_files(root: Path) -> set[Path]:
    """Files under ``root`` but lock files (the keyring makes one on first use)."""
    return {p for p in root.rglob("*") if p.is_file() and p.suffix != ".lock"}


@pytest.mark.slow
@pytest.mark.parametrize("back_mid_upload", [False, True], ids=["stays-down", "restarted"])
def test_an_s3_server_killed_mid_upload_fails_it_cleanly_and_a_retry_succeeds(
    tmp_path: Path, moto: MotoProcess, back_mid_upload: bool
) -> None:
    data = _data(3 * PART + 5 * CHUNK + 7, seed=3)
    cut = 2 * PART // CHUNK + 1  # two parts sent or on their way, the third being filled

    def source() -> Iterator[bytes]:
        for n, at in enumerate(range(0, len(data), CHUNK)):
            if n == cut:
                moto.kill()
                if back_mid_upload:  # the upload goes on against a server that never saw it
                    moto.start(BUCKET)
            yield data[at : at + CHUNK]

    with _store_on(tmp_path, moto.endpoint) as ops:
        project = add_project(ops.db, "p")
        before = _local_files(tmp_path)
        with pytest.raises(Unavailable, match=r"blob store \(s3://underlay-test/.*\) failed"):
            ops.put(project, source())
        assert ops.rows(project) == []
        assert _local_files(tmp_path) == before  # no temporary file left on this machine
        if not back_mid_upload:
            moto.start(BUCKET)
        assert ops.files() == []  # no blob and no partial object visible
        client = moto.client()
        try:
            assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
        finally:
            client.close()
        # the same store, untouched since, writes and reads again
        blob = ops.put(project, data, name="model.bin")
        assert (blob.digest, blob.size) == (_sha(data), len(data))
        assert ops.read(project, blob.digest) == data
        assert ops.files() == [ops.store.location(project, blob.digest)]


@pytest.mark.slow
def test_a_multipart_upload_holds_a_few_parts_in_memory(tmp_path: Path, moto: MotoProcess) -> None:
    """Traced in this process only: the S3 server, which keeps every part, runs in another."""
    block = os.urandom(CHUNK)

    def source(parts: int) -> Iterator[bytes]:
        for i in range(parts * PART // CHUNK):
            yield i.to_bytes(8, "big") + block[8:]

    def peak_of(ops: Ops, project: int, parts: int) -> int:
        tracemalloc.start()
        try:
            assert ops.put(project, source(parts)).size == parts * PART
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    with _store_on(tmp_path, moto.endpoint) as ops:
        project = add_project(ops.db, "p")
        ops.put(project, source(2))  # the first upload's one-off costs (imports, sessions)
        few, many = peak_of(ops, project, 3), peak_of(ops, project, 12)
    # the part being filled, the one being sent and its copies: not more for a longer blob
    assert many < few + PART // 2, (few / 2**20, many / 2**20)
    assert many < 4 * PART, f"a 12-part upload held {many / 2**20:.1f} MiB at its peak"


@pytest.mark.slow
def test_an_sdk_upload_rides_out_an_s3_outage_behind_the_server(
    tmp_path: Path, moto: MotoProcess
) -> None:
    """The server answers 503 while its S3 store is down; the SDK sends the upload again
    (a PUT: idempotent) until the store is back, and the blob is stored once."""
    import json
    import threading

    import httpx

    from tests.cli.conftest import ServerProcess
    from tests.conftest import ADMIN_TOKEN
    from underlay.client import Client

    options = {"endpoint_url": moto.endpoint, **CREDENTIALS}

    class S3Server(ServerProcess):
        def extra_env(self) -> dict[str, str]:
            return {
                "UNDERLAY_BLOBS__URL": f"s3://{BUCKET}/blobs",
                "UNDERLAY_BLOBS__STORAGE_OPTIONS": json.dumps(options),
                "UNDERLAY_COMPUTE__LOCAL_AGENT": "false",
            }

    back: list[threading.Thread] = []

    class Watching(httpx.HTTPTransport):
        """httpx's transport; the first 503 brings the S3 server back, in the background."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            if response.status_code == 503 and not back:
                back.append(threading.Thread(target=moto.start, args=(BUCKET,)))
                back[0].start()
            return response

    data = _data(3 * CHUNK + 11, seed=9)
    server = S3Server(tmp_path / "home").start(ready_within_s=120)
    try:
        with Client(server.url, ADMIN_TOKEN, transport=Watching(), retry_budget_s=120) as c:
            c.create_project("p")
            moto.kill()
            blob = c.upload_blob("p", data, name="weights.bin")
            assert back and c.retries > 0  # refused with 503 at least once, then stored
            assert c.download_blob("p", blob.digest) == data
            assert [b.digest for b in c.list_blobs("p")] == [blob.digest]
    finally:
        for thread in back:
            thread.join(60)
        server.stop()
