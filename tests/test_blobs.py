"""Blob store contract, run on every storage backend and on SQLite and PostgreSQL.

:class:`BlobStoreContract` holds the tests; a backend subclasses it and provides the
``blob_config`` fixture (the ``blobs`` settings). Here: the local folder. ``test_blobs_s3.py``
runs the same contract against an S3-compatible server.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import psutil
import pytest

from tests.conftest import add_project
from underlay.blobs import BlobStore, is_short_ref
from underlay.config import Settings, ensure_home, write_secret_file
from underlay.crypto import BLOB_HEADER_BYTES, BLOB_TAG_BYTES, Keyring
from underlay.errors import (
    Conflict,
    IntegrityFailure,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unavailable,
)
from underlay.store import Database, Scope
from underlay.store.models import Blob, User

CHUNK = 64 * 1024  # the smallest chunk size settings allow: many chunks from little data
SEALED = CHUNK + BLOB_TAG_BYTES


# Two contents whose SHA-256 digests share their first 8 hex digits (5de24eb3).
TWINS = (b"blob-25881", b"blob-140871")


def _data(size: int, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"\x5a" * (size % 32)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Ops:
    """The store plus the raw filesystem under it: what a test (or an attacker) can touch."""

    def __init__(self, store: BlobStore, db: Database, fs: Any) -> None:
        self.store, self.db, self.fs = store, db, fs

    def put(self, project_id: int, data: Any, **kwargs: Any) -> Blob:
        with self.db.session(Scope.projects(project_id)) as s:
            return self.store.put(s, project_id, data, **kwargs)

    def read(self, project_id: int, digest: str) -> bytes:
        with self.db.session(Scope.projects(project_id)) as s:
            chunks = self.store.open(s, project_id, digest)
        return b"".join(chunks)  # the iterator outlives the session

    def raw(self, project_id: int, digest: str) -> bytes:
        data: bytes = self.fs.cat_file(self.store.location(project_id, digest))
        return data

    def write_raw(self, project_id: int, digest: str, data: bytes) -> None:
        self.fs.pipe_file(self.store.location(project_id, digest), data)

    def files(self) -> list[str]:
        root = self.store.location(1, "0" * 64).rsplit("/", 3)[0]
        self.fs.invalidate_cache()
        return sorted(self.fs.find(root))

    def rows(self, project_id: int) -> list[Blob]:
        with self.db.session(Scope.projects(project_id)) as s:
            return self.store.list_blobs(s, project_id, limit=1000)


class BlobStoreContract:
    """The behaviour every blob backend must show."""

    @pytest.fixture
    def settings(self, tmp_path: Path, database_url: str, blob_config: dict[str, Any]) -> Settings:
        s = Settings(
            home=tmp_path / "home",
            store={"url": database_url},
            blobs={"chunk_size": CHUNK, **blob_config},
        )
        ensure_home(s)
        return s

    @pytest.fixture
    def ops(self, settings: Settings, db: Database) -> Ops:
        fs, _ = fsspec.core.url_to_fs(settings.blob_url, **settings.blobs.storage_options)
        return Ops(BlobStore(settings, Keyring(settings)), db, fs)

    @pytest.fixture
    def project(self, db: Database) -> int:
        return add_project(db, "p")

    @pytest.mark.parametrize(
        "size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17], ids=lambda n: f"{n}B"
    )
    def test_round_trip(self, ops: Ops, project: int, size: int) -> None:
        data = os.urandom(size)
        blob = ops.put(project, data, name="weights.bin", media_type="application/x-npy")
        assert (blob.digest, blob.size, blob.name) == (_sha(data), size, "weights.bin")
        assert blob.media_type == "application/x-npy"
        assert blob.stored_size == len(ops.raw(project, blob.digest))
        assert blob.stored_size == BLOB_HEADER_BYTES + (size // CHUNK + 1) * BLOB_TAG_BYTES + size
        with ops.db.session(Scope.projects(project)) as s:
            chunks = list(ops.store.open(s, project, blob.digest))
            assert ops.store.read_blob(s, project, blob.digest).id == blob.id
        assert b"".join(chunks) == data
        assert all(0 < len(c) <= CHUNK for c in chunks)

    def test_stored_bytes_are_encrypted(self, ops: Ops, project: int) -> None:
        data = b"attack at dawn; " * 10_000
        blob = ops.put(project, data)
        assert b"attack at dawn" not in ops.raw(project, blob.digest)

    def test_sources_files_iterables_and_bytes(self, ops: Ops, project: int) -> None:
        data = os.urandom(2 * CHUNK + 100)
        pieces = [data[:1], data[1:8], bytearray(data[8 : 2 * CHUNK + 50]), data[2 * CHUNK + 50 :]]
        digests = {
            ops.put(project, io.BytesIO(data)).digest,
            ops.put(project, iter(pieces)).digest,
            ops.put(project, data).digest,
            ops.put(project, [b"", data, b""]).digest,
        }
        assert digests == {_sha(data)}
        assert ops.read(project, _sha(data)) == data
        # small pieces straddling every chunk boundary: gathered in one reused buffer
        odd = os.urandom(3 * CHUNK + 5)
        blob = ops.put(project, (odd[i : i + 7] for i in range(0, len(odd), 7)))
        assert (blob.digest, ops.read(project, blob.digest)) == (_sha(odd), odd)
        with pytest.raises(InvalidInput, match="must yield bytes, got str"):
            ops.put(project, ["text"])

    def test_same_content_is_stored_once(self, ops: Ops, project: int) -> None:
        data = _data(CHUNK + 5)
        first = ops.put(project, data, name="a.bin")
        again = ops.put(project, data, name="b.bin")
        assert again.id == first.id and again.name == "a.bin"
        assert len(ops.rows(project)) == 1
        assert len(ops.files()) == 1
        other = add_project(ops.db, "other")
        assert ops.put(other, data).id != first.id  # projects never share blobs or keys
        assert ops.raw(other, first.digest) != ops.raw(project, first.digest)
        assert ops.read(other, first.digest) == data

    def test_a_second_upload_of_stored_content_leaves_its_file_untouched(
        self, ops: Ops, project: int
    ) -> None:
        data = _data(CHUNK + 5)
        digest = ops.put(project, data).digest
        stored = ops.raw(project, digest)
        ops.put(project, data)  # sealed again (a fresh nonce), the file would differ
        assert ops.raw(project, digest) == stored

    def test_an_unrestricted_session_keeps_each_projects_blob_its_own(
        self, ops: Ops, project: int
    ) -> None:
        """A platform task sees every project (no scope hides other projects' rows from it):
        the same content put into a second project is still that project's own row and file,
        and a prefix names only blobs of the project asked about."""
        other = add_project(ops.db, "other")
        data = _data(CHUNK + 5)
        with ops.db.session(Scope.everything()) as s:
            mine = ops.store.put(s, project, data)
            theirs = ops.store.put(s, other, data)
            assert theirs.id != mine.id and theirs.project_id == other
            assert ops.store.read_blob(s, other, mine.digest).id == theirs.id
            lone = ops.store.put(s, other, _data(40, seed=1)).digest
            with pytest.raises(NotFound, match=f"project {project} has no blob whose digest"):
                ops.store.resolve(s, project, lone[:12])
            assert ops.store.resolve(s, other, lone[:12]) == lone
        assert ops.raw(other, mine.digest) != ops.raw(project, mine.digest)
        with ops.db.session(Scope.everything()) as s:
            ops.store.delete_blob(s, other, mine.digest)
        assert ops.read(project, mine.digest) == data

    def test_blobs_are_named_in_full_after_sha256_or_by_a_unique_prefix(
        self, ops: Ops, project: int
    ) -> None:
        twins = [ops.put(project, data).digest for data in TWINS]
        assert twins[0][:8] == twins[1][:8] != twins[0][:9]
        one = twins[1]
        with ops.db.session(Scope.projects(project)) as s:
            for ref in (one, f"sha256:{one}", one[:9], f"sha256:{one[:9]}", one[:63]):
                assert ops.store.resolve(s, project, ref) == one
                assert ops.store.read_blob(s, project, ref).digest == one
            with pytest.raises(Conflict, match=f"prefix {one[:8]} is ambiguous: 2 blobs match"):
                ops.store.resolve(s, project, one[:8])
            for bad in (one[:7], f"sha256:{one[:7]}", one.upper()[:10]):
                with pytest.raises(InvalidInput, match="nor a prefix of at least 8 of them"):
                    ops.store.resolve(s, project, bad)
        assert [is_short_ref(r) for r in (one, f"sha256:{one}", one[:8], one[:63])] == [
            False,
            True,
            True,
            True,
        ]
        assert not any(is_short_ref(r) for r in (one[:7], "latest", "../" + one[:8]))

    def test_a_blob_records_its_uploader_and_an_empty_name_by_default(
        self, ops: Ops, project: int
    ) -> None:
        with ops.db.session(Scope.everything()) as s:
            user = User(name="uploader")
            s.add(user)
            s.flush()
            user_id = user.id
        blob = ops.put(project, _data(10), created_by=user_id)
        assert (blob.created_by, blob.name, blob.media_type) == (
            user_id,
            "",
            "application/octet-stream",
        )
        with ops.db.session(Scope.projects(project)) as s:
            key = ops.store._keyring.data_key(s, project)
        with (
            ops.store.stage(key, _data(11)) as staged,
            ops.db.session(Scope.projects(project)) as s,
        ):
            committed = ops.store.commit(s, project, staged, created_by=user_id)
            assert (committed.created_by, committed.name) == (user_id, "")

    def test_names_and_media_types_are_bounded(self, ops: Ops, project: int) -> None:
        assert ops.put(project, _data(1), name="n" * 255).name == "n" * 255
        typed = ops.put(project, _data(2), media_type="a/" + "b" * 125)
        assert typed.media_type == "a/" + "b" * 125
        with pytest.raises(
            InvalidInput, match="blob name is 256 characters long; the limit is 255"
        ):
            ops.put(project, _data(3), name="n" * 256)
        for media_type in ("", "a/" + "b" * 126, "binary"):
            with pytest.raises(
                InvalidInput,
                match=r"is not a type/subtype of at most 127 characters \(for example "
                "application/octet-stream\\)",
            ):
                ops.put(project, _data(3), media_type=media_type)
        assert len(ops.rows(project)) == 2

    def test_two_deletes_in_one_transaction_remove_both_files(self, ops: Ops, project: int) -> None:
        digests = [ops.put(project, _data(40, seed=i)).digest for i in range(3)]
        with ops.db.session(Scope.projects(project)) as s:
            ops.store.delete_blob(s, project, digests[0])
            ops.store.delete_blob(s, project, digests[1])
        assert ops.files() == [ops.store.location(project, digests[2])]

    def test_a_blob_a_dataset_version_holds_is_refused_deletion_and_kept(
        self, ops: Ops, project: int
    ) -> None:
        from underlay.data.models import Dataset, DatasetFile, DatasetVersion

        data = _data(40)
        digest = ops.put(project, data).digest
        with ops.db.session(Scope.projects(project)) as s:
            dataset = Dataset(project_id=project, name="images")
            s.add(dataset)
            s.flush()
            version = DatasetVersion(
                project_id=project,
                dataset_id=dataset.id,
                version=1,
                file_count=1,
                total_size=len(data),
                manifest_digest="0" * 64,
            )
            s.add(version)
            s.flush()
            s.add(
                DatasetFile(
                    project_id=project, version_id=version.id, path="a", digest=digest, size=40
                )
            )
        with (
            pytest.raises(
                Conflict,
                match=f"^blob sha256:{digest} is still held by other objects of this project "
                r"\(a dataset version\): remove those first$",
            ),
            ops.db.session(Scope.projects(project)) as s,
        ):
            ops.store.delete_blob(s, project, digest)
        assert ops.read(project, digest) == data
        assert [b.digest for b in ops.rows(project)] == [digest]

    def test_a_deleted_projects_files_go_once_its_deletion_commits(
        self, ops: Ops, project: int
    ) -> None:
        other = add_project(ops.db, "other")
        mine, theirs = ops.put(project, _data(10)).digest, ops.put(other, _data(10)).digest
        with (
            pytest.raises(RuntimeError, match="changed my mind"),
            ops.db.session(Scope.everything()) as s,
        ):
            ops.store.delete_project_files(s, project)
            raise RuntimeError("changed my mind")
        assert ops.read(project, mine) == _data(10)
        with ops.db.session(Scope.everything()) as s:
            ops.store.delete_project_files(s, project)
        assert ops.files() == [ops.store.location(other, theirs)]

    @pytest.mark.parametrize("where", ["header", "first chunk", "middle chunk", "last byte"])
    def test_a_flipped_byte_is_an_integrity_failure(
        self, ops: Ops, project: int, where: str
    ) -> None:
        data = _data(3 * CHUNK + 100)
        digest = ops.put(project, data).digest
        raw = bytearray(ops.raw(project, digest))
        offset, chunk = {
            "header": (12, 0),
            "first chunk": (BLOB_HEADER_BYTES + 5, 0),
            "middle chunk": (BLOB_HEADER_BYTES + SEALED + CHUNK // 2, 1),
            "last byte": (len(raw) - 1, 3),
        }[where]
        raw[offset] ^= 0x01
        ops.write_raw(project, digest, bytes(raw))
        message = (
            f"blob sha256:{digest} of project {project} failed its integrity check "
            rf"\(chunk {chunk}\): restore it from backup"
        )
        with pytest.raises(IntegrityFailure, match=message):
            ops.read(project, digest)

    def test_truncated_and_extended_files_are_detected(self, ops: Ops, project: int) -> None:
        data = _data(2 * CHUNK + 100)
        digest = ops.put(project, data).digest
        raw = ops.raw(project, digest)
        cases = {
            raw[: BLOB_HEADER_BYTES + 2 * SEALED]: r"chunk 2 \(the last\) is missing",
            raw[:-1]: r"chunk 2",
            raw[: BLOB_HEADER_BYTES + 10]: r"chunk 0",
            raw[:20]: "shorter than the blob header",
            raw + b"\x00": r"chunk 2",
            raw + bytes(SEALED): r"chunk 2",
        }
        for damaged, reason in cases.items():
            ops.write_raw(project, digest, damaged)
            with pytest.raises(IntegrityFailure, match=f"sha256:{digest}.*{reason}"):
                ops.read(project, digest)

    def test_reordered_chunks_are_detected(self, ops: Ops, project: int) -> None:
        digest = ops.put(project, os.urandom(3 * CHUNK)).digest
        raw = ops.raw(project, digest)
        head, c0, c1 = (
            raw[:BLOB_HEADER_BYTES],
            raw[BLOB_HEADER_BYTES : BLOB_HEADER_BYTES + SEALED],
            raw[BLOB_HEADER_BYTES + SEALED : BLOB_HEADER_BYTES + 2 * SEALED],
        )
        ops.write_raw(project, digest, head + c1 + c0 + raw[BLOB_HEADER_BYTES + 2 * SEALED :])
        with pytest.raises(IntegrityFailure, match=r"\(chunk 0\)"):
            ops.read(project, digest)

    def test_swapped_blob_files_fail_before_their_last_bytes(self, ops: Ops, project: int) -> None:
        a, b = _data(2 * CHUNK + 10, seed=1), _data(2 * CHUNK + 10, seed=2)
        da, db_ = ops.put(project, a).digest, ops.put(project, b).digest
        raw_a, raw_b = ops.raw(project, da), ops.raw(project, db_)
        ops.write_raw(project, da, raw_b)
        ops.write_raw(project, db_, raw_a)
        for digest in (da, db_):
            received = bytearray()
            with (
                pytest.raises(IntegrityFailure, match=rf"sha256:{digest}.*\(chunk 2\)"),
                ops.db.session(Scope.projects(project)) as s,
            ):
                chunks = ops.store.open(s, project, digest)
                for chunk in chunks:
                    received += chunk
            assert len(received) == 2 * CHUNK  # the final chunk was never yielded

    def test_a_missing_file_is_reported_and_restored_by_uploading_again(
        self, ops: Ops, project: int
    ) -> None:
        data = _data(100)
        digest = ops.put(project, data).digest
        ops.fs.rm(ops.store.location(project, digest))
        with pytest.raises(IntegrityFailure, match=f"sha256:{digest} .* is missing from storage"):
            ops.read(project, digest)
        ops.put(project, data)
        assert ops.read(project, digest) == data

    def test_max_size_is_enforced(self, ops: Ops, project: int, settings: Settings) -> None:
        small = settings.model_copy(
            update={"blobs": settings.blobs.model_copy(update={"max_size": CHUNK + 10})}
        )
        store = BlobStore(small, Keyring(small))
        with (
            pytest.raises(
                PayloadTooLarge,
                match=rf"larger than the limit of {CHUNK + 10} bytes \(setting blobs.max_size\): "
                "split it or raise the limit$",
            ),
            ops.db.session(Scope.projects(project)) as s,
        ):
            store.put(s, project, iter([_data(CHUNK), _data(11)]))
        assert ops.rows(project) == []
        assert ops.files() == []
        with ops.db.session(Scope.projects(project)) as s:
            assert store.put(s, project, _data(CHUNK + 10)).size == CHUNK + 10

    def test_expected_digest_is_checked(self, ops: Ops, project: int) -> None:
        data = _data(1000)
        wrong = _sha(b"something else")
        with pytest.raises(InvalidInput, match=f"has digest sha256:{_sha(data)}, expected"):
            ops.put(project, data, expected_digest=wrong)
        assert ops.rows(project) == []
        assert ops.files() == []
        assert ops.put(project, data, expected_digest=_sha(data)).digest == _sha(data)

    def test_an_interrupted_write_leaves_no_file_and_no_row(self, ops: Ops, project: int) -> None:
        def source() -> Iterator[bytes]:
            yield _data(CHUNK)
            yield _data(CHUNK)
            raise ConnectionResetError("client went away")

        with pytest.raises(ConnectionResetError, match="client went away"):
            ops.put(project, source())
        assert ops.rows(project) == []
        assert ops.files() == []

    def test_sweep_removes_leftovers_of_crashed_writes(self, ops: Ops, project: int) -> None:
        kept = _data(10)
        digest = ops.put(project, kept).digest
        location = ops.store.location(project, digest)
        for name in ("crashed.part", "killed.part"):
            ops.fs.pipe_file(location.rsplit("/", 3)[0] + f"/.partial/{name}", b"half a blob")
        assert ops.store.sweep_partials(older_than_s=3600) == 0  # might be a write in flight
        assert ops.store.sweep_partials() == 2
        assert ops.files() == [location]
        assert ops.read(project, digest) == kept

    def test_digests_are_validated(self, ops: Ops, project: int) -> None:
        bad = ["../../etc/passwd", "A" * 64, "a" * 7, "a" * 65, "g" * 64, "", "sha256:"]
        with ops.db.session(Scope.projects(project)) as s:
            for digest in bad:
                with pytest.raises(InvalidInput, match="not a SHA-256 hex digest"):
                    ops.store.open(s, project, digest)
                with pytest.raises(InvalidInput, match="not a SHA-256 hex digest"):
                    ops.store.delete_blob(s, project, digest)
            with pytest.raises(InvalidInput, match="not a SHA-256 hex digest"):
                ops.store.put(s, project, b"x", expected_digest="../x")
            with pytest.raises(InvalidInput, match="media type"):
                ops.store.put(s, project, b"x", media_type="binary")
            with pytest.raises(
                NotFound,
                match=f"project {project} has no blob sha256:a{{64}}: check the digest, or list "
                "the project's blobs$",
            ):
                ops.store.open(s, project, "a" * 64)
            with pytest.raises(
                NotFound,
                match=r"no blob whose digest starts with a{63}: check the digest, or list the "
                "project's blobs$",
            ):
                ops.store.open(s, project, "a" * 63)  # a short prefix (git-style) of no blob

    def test_other_projects_blobs_are_invisible(self, ops: Ops, project: int) -> None:
        other = add_project(ops.db, "other")
        digest = ops.put(project, _data(10)).digest
        with ops.db.session(Scope.projects(other)) as s:
            with pytest.raises(NotFound, match="has no blob"):
                ops.store.open(s, project, digest)
            assert ops.store.list_blobs(s, project) == []
        with (
            pytest.raises(PermissionDenied, match=f"does not include project {project}"),
            ops.db.session(Scope.projects(other)) as s,
        ):
            ops.store.put(s, project, _data(20))

    def test_list_and_delete(self, ops: Ops, project: int) -> None:
        digests = [ops.put(project, _data(100, seed=i)).digest for i in range(3)]
        with ops.db.session(Scope.projects(project)) as s:
            newest = ops.store.list_blobs(s, project, limit=2)
            assert [b.digest for b in newest] == digests[:0:-1]
            assert [b.digest for b in ops.store.list_blobs(s, project, 2, 2)] == digests[:1]
            with pytest.raises(InvalidInput, match="limit must be"):
                ops.store.list_blobs(s, project, limit=0)
        with (
            pytest.raises(RuntimeError, match="changed my mind"),
            ops.db.session(Scope.projects(project)) as s,
        ):
            ops.store.delete_blob(s, project, digests[0])
            raise RuntimeError("changed my mind")
        assert ops.read(project, digests[0]) == _data(100, seed=0)  # rolled back: file kept
        with ops.db.session(Scope.projects(project)) as s:
            ops.store.delete_blob(s, project, digests[0])
        assert ops.store.location(project, digests[0]) not in ops.files()
        with pytest.raises(NotFound, match="has no blob"):
            ops.read(project, digests[0])
        assert len(ops.rows(project)) == 2

    def test_delete_then_upload_again_in_one_transaction(self, ops: Ops, project: int) -> None:
        data = _data(100)
        digest = ops.put(project, data).digest
        with ops.db.session(Scope.projects(project)) as s:
            ops.store.delete_blob(s, project, digest)
            ops.store.put(s, project, data)
        assert ops.read(project, digest) == data

    def test_blobs_stay_readable_after_key_rotation(
        self, ops: Ops, project: int, settings: Settings
    ) -> None:
        data = _data(2 * CHUNK + 3)
        digest = ops.put(project, data).digest
        old_key = settings.master_key_path.read_bytes()
        new_id = Keyring(settings).rotate(ops.db)
        fresh = Ops(BlobStore(settings, Keyring(settings)), ops.db, ops.fs)
        assert fresh.read(project, digest) == data
        assert ops.read(project, digest) == data  # the keyring that predates the rotation
        write_secret_file(settings.master_key_path, old_key, overwrite=True)
        stale = Ops(BlobStore(settings, Keyring(settings)), ops.db, ops.fs)
        with pytest.raises(
            Unavailable, match=f"project {project} is wrapped by master key {new_id}"
        ):
            stale.read(project, digest)


class TestLocalBlobStore(BlobStoreContract):
    @pytest.fixture
    def blob_config(self) -> dict[str, Any]:
        return {}

    def test_a_sweep_spares_live_writes_and_removes_abandoned_ones(
        self, ops: Ops, project: int, settings: Settings
    ) -> None:
        """Another worker's sweep (another store on the same folder) never removes a write
        in progress, whatever its age; a partial nobody holds goes at once."""
        partials = Path(settings.blob_url) / ".partial"
        abandoned = partials / "killed.part"  # what a SIGKILLed upload leaves: no lock
        abandoned.write_bytes(b"half a blob")
        head, release = threading.Event(), threading.Event()
        data = _data(3 * CHUNK)

        def source() -> Iterator[bytes]:
            yield data[:CHUNK]
            head.set()
            release.wait(30)
            yield data[CHUNK:]

        result: list[Blob] = []
        writer = threading.Thread(target=lambda: result.append(ops.put(project, source())))
        writer.start()
        try:
            assert head.wait(30)
            other_worker = BlobStore(settings, Keyring(settings))
            assert other_worker.sweep_partials() == 1
            assert [p.name for p in partials.iterdir()] != []  # the live write's file stays
            assert not abandoned.exists()
        finally:
            release.set()
            writer.join(30)
        assert result and result[0].digest == _sha(data)
        assert ops.read(project, result[0].digest) == data
        assert list(partials.iterdir()) == []

    def test_a_sweep_spares_a_staged_blob_waiting_for_its_commit(
        self, ops: Ops, project: int, settings: Settings
    ) -> None:
        """The upload route stages (writes) a blob, then commits it in a second transaction;
        a worker starting up in between sweeps partials and must leave the staged one alone
        (a CI run once lost an upload with a 500 this way)."""
        data = _data(2 * CHUNK + 5)
        with ops.db.session(Scope.projects(project)) as s:
            key = ops.store._keyring.data_key(s, project)
        with ops.store.stage(key, data) as staged:
            assert BlobStore(settings, Keyring(settings)).sweep_partials() == 0
            with ops.db.session(Scope.projects(project)) as s:
                blob = ops.store.commit(s, project, staged)
        assert ops.read(project, blob.digest) == data
        assert list((Path(settings.blob_url) / ".partial").iterdir()) == []

    def test_a_sweep_with_an_age_removes_only_older_partials_and_counts_each(
        self, ops: Ops, settings: Settings
    ) -> None:
        partials = Path(settings.blob_url) / ".partial"
        now = time.time()
        for name, mtime in (("old-1.part", now - 3600), ("old-2.part", now - 3600)):
            (partials / name).write_bytes(b"half a blob")
            os.utime(partials / name, (mtime, mtime))
        (partials / "new.part").write_bytes(b"half a blob")
        os.utime(partials / "new.part", (now + 3600, now + 3600))  # fresh, whatever the clock
        assert ops.store.sweep_partials(older_than_s=1800) == 2
        assert ops.store.sweep_partials(older_than_s=0.5) == 0
        assert [p.name for p in partials.iterdir()] == ["new.part"]
        assert ops.store.sweep_partials() == 1
        partials.rmdir()  # a folder someone removed: nothing to sweep
        assert ops.store.sweep_partials() == 0

    def test_a_storage_failure_while_reading_is_unavailable_naming_the_store(
        self, ops: Ops, project: int
    ) -> None:
        digest = ops.put(project, _data(10)).digest
        path = Path(ops.store.location(project, digest))
        path.unlink()
        path.mkdir()  # an unreadable file: the local folder's own I/O error
        with pytest.raises(
            Unavailable,
            match=rf"the blob store \(a local folder\) failed while reading blob sha256:{digest}"
            rf" of project {project}: IsADirectoryError: .*; try again once it is reachable",
        ):
            ops.read(project, digest)

    def test_listing_pages_are_bounded(self, ops: Ops, project: int) -> None:
        digests = [ops.put(project, _data(40, seed=i)).digest for i in range(101)]
        with ops.db.session(Scope.projects(project)) as s:
            assert len(ops.store.list_blobs(s, project)) == 100  # the default page
            assert [b.digest for b in ops.store.list_blobs(s, project, limit=1)] == digests[-1:]
            with pytest.raises(InvalidInput, match="offset must be 0 or more, got -1"):
                ops.store.list_blobs(s, project, offset=-1)

    def test_restoring_a_lost_file_records_the_size_it_is_stored_at_now(
        self, ops: Ops, project: int, settings: Settings
    ) -> None:
        """The chunk size may have changed since the blob was first stored: the restored
        file's size is the row's."""
        data = _data(3 * CHUNK)
        digest = ops.put(project, data).digest
        ops.fs.rm(ops.store.location(project, digest))
        wider = settings.model_copy(
            update={"blobs": settings.blobs.model_copy(update={"chunk_size": 2 * CHUNK})}
        )
        with ops.db.session(Scope.projects(project)) as s:
            restored = BlobStore(wider, Keyring(wider)).put(s, project, data)
            assert restored.stored_size == len(ops.raw(project, digest))
            assert restored.stored_size != BLOB_HEADER_BYTES + 4 * BLOB_TAG_BYTES + len(data)
        assert ops.read(project, digest) == data

    def test_platform_start_sweeps_abandoned_partials(self, settings: Settings) -> None:
        """Start-up itself (not a caller of ``sweep_partials``) clears a crashed write."""
        from underlay.platform import Platform

        partials = Path(settings.blob_url) / ".partial"
        partials.mkdir(parents=True, exist_ok=True)
        (partials / "killed.part").write_bytes(b"half a blob")
        platform = Platform(settings)
        try:
            platform.start()
        finally:
            platform.close()
        assert list(partials.iterdir()) == []


# -- bounded memory (local folder, SQLite) -------------------------------------------------


class PeakRss:
    """Samples this process's resident set size in a background thread."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.baseline = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / 2**20


@pytest.mark.slow
def test_large_streams_use_bounded_memory(tmp_path: Path) -> None:
    total = 256 * 2**20
    settings = Settings(home=tmp_path / "home")  # default 4 MiB chunks, SQLite
    ensure_home(settings)
    db = Database(settings.database_url)
    db.migrate(lock_dir=settings.home)
    ops = Ops(BlobStore(settings, Keyring(settings)), db, fsspec.filesystem("file"))
    project = add_project(db, "big")
    block = os.urandom(2**20)
    expected = hashlib.sha256()

    def source() -> Iterator[bytes]:
        for i in range(total // len(block)):
            piece = i.to_bytes(8, "big") + block[8:]
            expected.update(piece)
            yield piece

    try:
        with PeakRss() as writing:
            blob = ops.put(project, source())
        assert blob.size == total and blob.digest == expected.hexdigest()
        with PeakRss() as reading:
            with db.session(Scope.projects(project)) as s:
                chunks = ops.store.open(s, project, blob.digest)
            got = hashlib.sha256()
            for chunk in chunks:
                got.update(chunk)
        assert got.hexdigest() == blob.digest
    finally:
        db.dispose()
    # a handful of 4 MiB chunks in flight, against 256 MiB streamed
    assert writing.growth_mib < 48, f"writing grew RSS by {writing.growth_mib:.0f} MiB"
    assert reading.growth_mib < 48, f"reading grew RSS by {reading.growth_mib:.0f} MiB"


def test_the_storage_backends_own_errors_are_told_from_others() -> None:
    """A failure of the object store's client libraries (not only an OSError) is the store
    being unavailable; any other error is a fault of ours and passes through."""
    from botocore.exceptions import EndpointConnectionError

    from underlay.blobs import _is_storage_error

    assert _is_storage_error(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    assert _is_storage_error(IsADirectoryError("a folder"))
    assert not _is_storage_error(ValueError("a bug of ours"))
    assert not _is_storage_error(IntegrityFailure("tampered"))
