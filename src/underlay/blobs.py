"""Content-addressed, encrypted blob storage over any fsspec filesystem.

A blob is named by the SHA-256 of its plaintext and stored once per project at
``<root>/<project_id>/<digest[:2]>/<digest>``, encrypted under the project's data key with
the chunked AEAD of :mod:`underlay.crypto`. One implementation serves every backend: a local
folder by default, any fsspec URL (``s3://bucket/prefix``) by configuration.

Design decisions:

* **Streaming in bounded memory.** Writes hash and encrypt one chunk (``blobs.chunk_size``,
  4 MiB by default) at a time; reads decrypt one chunk at a time and authenticate each chunk
  before yielding it. The digest is bound into the last chunk, so a blob file moved under
  another name fails at the last chunk, before its last bytes are yielded.
* **Temporary name, then rename.** A write goes to ``<root>/.partial/<random>.part`` and is
  renamed to its final name only when complete, so a crash never leaves a half blob under a
  digest. :meth:`BlobStore.sweep_partials` removes the leftovers of crashed writes. On a local
  folder the writer holds an exclusive ``flock`` on its partial file from its creation until
  it is renamed into place or discarded (the kernel drops it when the process dies, SIGKILL
  included), so a sweep at any time, from any worker, removes exactly the partials no live
  write owns. Remote stores have no such
  lock; there only partials older than an age are swept.
* **File first, row second.** The metadata row is added in the caller's transaction only
  after the file is in place. If the process dies between the rename and the commit, the
  file stays without a row: harmless, since it is only reachable through a row, and the next
  upload of the same content to the same project overwrites it with an equivalent file.
  Deletion is the mirror image: the row goes in the caller's transaction and the file after
  that transaction commits, so a rolled-back delete loses nothing.
* **An unreachable store is Unavailable.** A backend failure while writing or reading (a
  refused connection, an upload the object store lost because it restarted, a full disk) is
  raised as :class:`~underlay.errors.Unavailable` naming the store, never as the backend's
  own exception; an upload that fails is abandoned (its multipart upload aborted where the
  store can still be reached) rather than completed with what was written.
* **Paths from digests only.** Digests are checked to be 64 lowercase hex digits before they
  reach a path; names and media types are display labels, never path components.

On SQLite the caller's transaction holds the database's single write lock from its first
statement, so long uploads go in two steps: :meth:`BlobStore.stage` encrypts the source to a
temporary file before any transaction, and :meth:`BlobStore.commit` moves it into place and
adds the row in a short one. :meth:`BlobStore.put` does both, for small sources and tests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import itertools
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
from cryptography.utils import Buffer
from sqlalchemy import event, exc, select
from sqlalchemy.orm import Session

from underlay import blob_io
from underlay.config import Settings
from underlay.crypto import BLOB_HEADER_BYTES, BlobDecryptor, BlobEncryptor, Keyring
from underlay.errors import (
    Conflict,
    IntegrityFailure,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    UnderlayError,
)
from underlay.store.models import Blob
from underlay.store.types import utcnow

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"[0-9a-f]{64}")
_DIGEST_PREFIX = re.compile(r"[0-9a-f]{8,64}")
MIN_PREFIX = 8
_PARTIAL_DIR = ".partial"
_PENDING_DELETES = "underlay.blobs.pending_deletes"
DEFAULT_MEDIA_TYPE = "application/octet-stream"
MAX_LIST_LIMIT = 1000


def check_digest(digest: str) -> str:
    """``digest`` if it is a SHA-256 hex digest (64 lowercase hex digits), else InvalidInput."""
    if not isinstance(digest, str) or _DIGEST.fullmatch(digest) is None:
        raise InvalidInput(
            f"blob digest {digest!r} is not a SHA-256 hex digest (64 lowercase hex digits)"
        )
    return digest


def is_short_ref(ref: str) -> bool:
    """Whether ``ref`` names a blob in a form :meth:`BlobStore.resolve` must expand: with the
    ``sha256:`` prefix, or a short hex prefix (8 to 63 digits)."""
    return ref.startswith("sha256:") or (
        len(ref) < 64 and _DIGEST_PREFIX.fullmatch(ref) is not None
    )


@dataclass
class StagedBlob:
    """An encrypted upload in a temporary file, waiting for :meth:`BlobStore.commit`."""

    partial: str
    digest: str
    size: int
    stored_size: int
    placed: bool = False


class BlobStore:
    """Encrypted, content-addressed blobs of each project (see the module docstring)."""

    def __init__(self, settings: Settings, keyring: Keyring) -> None:
        self._keyring = keyring
        self._chunk_size = settings.blobs.chunk_size
        self._max_size = settings.blobs.max_size
        fs, root = fsspec.core.url_to_fs(settings.blob_url, **settings.blobs.storage_options)
        self._fs: Any = fs
        self._root: str = root.rstrip("/")
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
        self._local = "file" in protocols
        self._scheme: str = protocols[0]
        if self._local:
            fs.makedirs(f"{self._root}/{_PARTIAL_DIR}", exist_ok=True)

    def location(self, project_id: int, digest: str) -> str:
        """Where a blob's file lives, as a path of the store's filesystem."""
        check_digest(digest)
        return f"{self._root}/{int(project_id)}/{digest[:2]}/{digest}"

    # -- writes ------------------------------------------------------------------------

    def put(
        self,
        session: Session,
        project_id: int,
        source: BinaryIO | bytes | Iterable[bytes],
        *,
        name: str = "",
        media_type: str = DEFAULT_MEDIA_TYPE,
        created_by: int | None = None,
        expected_digest: str | None = None,
    ) -> Blob:
        """Store ``source`` (a binary file, bytes, or an iterable of bytes); return its row.

        Uploading content the project already holds returns the existing row. This reads the
        source inside the caller's transaction; for long uploads use :meth:`stage` before the
        transaction and :meth:`commit` inside it.
        """
        _check_labels(name, media_type)
        key = self._keyring.data_key(session, project_id)
        with self.stage(key, source, expected_digest=expected_digest) as staged:
            return self.commit(
                session,
                project_id,
                staged,
                name=name,
                media_type=media_type,
                created_by=created_by,
            )

    @contextlib.contextmanager
    def stage(
        self,
        data_key: bytes,
        source: BinaryIO | bytes | Iterable[bytes],
        *,
        expected_digest: str | None = None,
    ) -> Iterator[StagedBlob]:
        """Encrypt ``source`` to a temporary file, outside any transaction.

        The file is removed on leaving the block unless :meth:`commit` moved it into place.
        """
        if expected_digest is not None:
            check_digest(expected_digest)
        partial = f"{self._root}/{_PARTIAL_DIR}/{secrets.token_hex(16)}.part"
        staged: StagedBlob | None = None
        # a remote partial exists only once its upload completed; an abandoned one never does
        # (or, if completing it failed after the store did it, it is swept as abandoned)
        written = self._local
        try:
            with contextlib.ExitStack() as held:
                out = held.enter_context(self._open_partial(partial))
                digest, size, stored_size = self._write(_Translated(out, self), data_key, source)
                if not self._local:
                    held.close()  # a remote upload completes on close, before the move
                    written = True
                if expected_digest is not None and digest != expected_digest:
                    raise InvalidInput(
                        f"uploaded content has digest sha256:{digest}, expected "
                        f"sha256:{expected_digest}: the upload was corrupted or the digest is "
                        "wrong"
                    )
                staged = StagedBlob(partial, digest, size, stored_size)
                # a local partial stays open and locked until it is moved: a sweep from another
                # worker starting up meanwhile must not take it for a crashed write's leftover
                yield staged
        finally:
            if written and (staged is None or not staged.placed):
                self._discard_quietly(partial)

    def commit(
        self,
        session: Session,
        project_id: int,
        staged: StagedBlob,
        *,
        name: str = "",
        media_type: str = DEFAULT_MEDIA_TYPE,
        created_by: int | None = None,
    ) -> Blob:
        """Move a staged blob into place and add its row in the caller's transaction."""
        _check_labels(name, media_type)
        digest = staged.digest
        existing = self._find(session, project_id, digest)
        final = self.location(project_id, digest)
        with self.storage_errors("placing a blob"):
            missing = existing is None or not self._fs.exists(final)
        if missing:
            # a missing file under an existing row is restored by the same move
            self._place(session, staged.partial, final)
            staged.placed = True
        if existing is not None:
            if staged.placed:  # restored a lost file; the chunk size may have changed since
                existing.stored_size = staged.stored_size
            return existing
        blob = Blob(
            project_id=project_id,
            digest=digest,
            size=staged.size,
            stored_size=staged.stored_size,
            name=name,
            media_type=media_type,
            created_by=created_by,
        )
        try:
            with session.begin_nested():
                session.add(blob)
        except exc.IntegrityError:
            # A concurrent upload of the same content committed first (PostgreSQL only;
            # SQLite serialises writers). Its file is equivalent to ours.
            existing = self._find(session, project_id, digest)
            if existing is None:
                raise
            return existing
        return blob

    def _place(self, session: Session, partial: str, final: str) -> None:
        with self.storage_errors("placing a blob"):
            if self._local:
                self._fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            self._fs.mv(partial, final)
        # a delete of the same blob earlier in this transaction must not remove the new file
        pending: list[tuple[BlobStore, str]] = session.info.get(_PENDING_DELETES, [])
        pending[:] = [(store, path) for store, path in pending if path != final]

    def _write(
        self, out: Any, key: bytes, source: BinaryIO | bytes | Iterable[bytes]
    ) -> tuple[str, int, int]:
        """Encrypt ``source`` into the open file ``out``; returns (digest, size, stored size)."""
        encryptor = BlobEncryptor(key, self._chunk_size)
        sha = hashlib.sha256()
        size = 0
        chunks = blob_io.chunks(source, self._chunk_size)
        first = next(chunks)
        # a blob of one chunk has nothing to overlap: no writer thread for it
        writer = (
            blob_io.Writer(out) if len(first) == self._chunk_size else blob_io.InlineWriter(out)
        )
        with writer:
            writer.write(encryptor.header)
            stored = len(encryptor.header)
            for chunk in itertools.chain((first,), chunks):
                size += len(chunk)
                if size > self._max_size:
                    raise PayloadTooLarge(
                        f"blob is larger than the limit of {self._max_size} bytes "
                        "(setting blobs.max_size): split it or raise the limit"
                    )
                sha.update(chunk)
                if len(chunk) == self._chunk_size:
                    sealed = encryptor.update(chunk)
                else:
                    sealed = encryptor.finish(chunk, sha.digest())
                writer.write(sealed)
                stored += len(sealed)
            writer.drain()
            if self._local:  # durable before the rename makes it visible
                out.flush()
                os.fsync(out.fileno())
        return sha.hexdigest(), size, stored

    @contextlib.contextmanager
    def _open_partial(self, path: str) -> Iterator[Any]:
        """``path`` opened for writing; on a local folder, locked until it is closed. A remote
        file is completed on leaving the block normally and abandoned when it raises."""
        if not self._local:
            with self.storage_errors("starting an upload"):
                out = self._fs.open(path, "wb")
            try:
                yield out
            except BaseException:
                self._abandon(out)
                raise
            with self.storage_errors("finishing an upload"):
                out.close()
            return
        for _ in range(3):
            with self._fs.open(path, "wb") as out:
                fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # released on close, or on death
                if os.fstat(out.fileno()).st_nlink:
                    yield out
                    return
            # a sweeper removed the new file before we locked it: create it again
        raise Unavailable(f"could not create the temporary blob file {path}: try again")

    def _abandon(self, out: Any) -> None:
        """Give up a remote file being written: abort its multipart upload, if the store can
        still be reached, instead of letting close() complete it with what was written."""
        discard = getattr(out, "discard", None)  # fsspec's buffered files (s3fs: abort)
        if discard is None:  # another kind of file: closing it is all there is; the partial
            with contextlib.suppress(Exception):  # it leaves is removed by stage()
                out.close()
            return
        try:
            discard()
        except Exception:  # the store is away; an object store expires unfinished uploads
            log.warning("could not abort the upload of %s", out.path, exc_info=True)
        out.closed = True  # close() (or the collector) must not complete it

    @contextlib.contextmanager
    def storage_errors(self, doing: str) -> Iterator[None]:
        """The backend's failures inside the block, raised as Unavailable naming the store."""
        try:
            yield
        except UnderlayError:
            raise
        except Exception as error:
            if not _is_storage_error(error):
                raise
            raise Unavailable(
                f"the blob store ({self._describe}) failed while {doing}: "
                f"{type(error).__name__}: {error}; nothing was stored: try again once it is "
                "reachable"
            ) from error

    @property
    def _describe(self) -> str:
        return "a local folder" if self._local else f"{self._scheme}://{self._root}"

    def _discard_quietly(self, path: str) -> None:
        """Remove ``path`` (a folder with what it holds) if it exists; a failure is logged,
        not raised (cleanup only)."""
        try:
            self._fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        except Exception:  # the backend's errors vary; sweep_partials catches what is left
            log.warning("could not remove blob file %s", path, exc_info=True)

    def delete_blob(self, session: Session, project_id: int, digest: str) -> None:
        """Delete a blob's row now and its file once the caller's transaction commits."""
        blob = self.read_blob(session, project_id, digest)
        try:
            with session.begin_nested():
                session.delete(blob)
        except exc.IntegrityError:  # a row of a domain (a dataset version) still names it
            raise Conflict(
                f"blob sha256:{blob.digest} is still held by other objects of this project (a "
                "dataset version): remove those first"
            ) from None
        self._discard_after_commit(session, self.location(project_id, blob.digest))

    def delete_project_files(self, session: Session, project_id: int) -> None:
        """Remove every blob file of a project once the caller's transaction commits (the
        project's rows go with the project; this is for its folder)."""
        self._discard_after_commit(session, f"{self._root}/{int(project_id)}")

    def _discard_after_commit(self, session: Session, path: str) -> None:
        pending: list[tuple[BlobStore, str]] | None = session.info.get(_PENDING_DELETES)
        if pending is None:
            pending = session.info[_PENDING_DELETES] = []
            event.listen(session, "after_commit", _delete_pending)
            event.listen(session, "after_soft_rollback", _forget_pending)
        pending.append((self, path))

    @property
    def locks_partials(self) -> bool:
        """Whether a live write's partial file is locked, so any sweep spares it (local)."""
        return self._local

    def sweep_partials(self, older_than_s: float = 0) -> int:
        """Remove temporary files of writes that crashed; returns how many were removed.

        On a local folder a partial that a live write holds locked is never removed, so the
        default 0 (every abandoned partial) is safe with several workers. On a remote store
        the default also removes writes in progress: there, give an age.
        """
        folder = f"{self._root}/{_PARTIAL_DIR}"
        self._fs.invalidate_cache(folder)
        try:
            paths: list[str] = self._fs.ls(folder, detail=False)
        except FileNotFoundError:
            return 0
        cutoff = utcnow() - dt.timedelta(seconds=older_than_s)
        removed = 0
        for path in paths:
            try:
                if older_than_s > 0 and self._fs.modified(path) >= cutoff:
                    continue
                if self._local:
                    removed += _remove_if_unlocked(path)
                else:
                    self._fs.rm(path)
                    removed += 1
            except FileNotFoundError:
                continue  # its writer finished or another sweeper got there first
        return removed

    # -- reads -------------------------------------------------------------------------

    def resolve(self, session: Session, project_id: int, ref: str) -> str:
        """The full digest ``ref`` names in this project: 64 hex digits as they are, or with the
        ``sha256:`` prefix, or a unique prefix of at least 8 digits (git-style).

        Prefixes are matched only among the project's own blobs, so they never reveal another
        project's. Ambiguous is a Conflict naming how many match; none is NotFound.
        """
        hex_part = ref.removeprefix("sha256:") if isinstance(ref, str) else ref
        if isinstance(hex_part, str) and _DIGEST.fullmatch(hex_part):
            return hex_part
        if not isinstance(hex_part, str) or _DIGEST_PREFIX.fullmatch(hex_part) is None:
            raise InvalidInput(
                f"blob digest {ref!r} is not a SHA-256 hex digest (64 lowercase hex digits, "
                f"optionally after 'sha256:') nor a prefix of at least {MIN_PREFIX} of them"
            )
        query = (
            select(Blob.digest)
            .where(Blob.project_id == project_id, Blob.digest.startswith(hex_part))
            .limit(MAX_LIST_LIMIT)
        )
        found = list(session.scalars(query))
        if not found:
            raise NotFound(
                f"project {project_id} has no blob whose digest starts with {hex_part}: "
                "check the digest, or list the project's blobs"
            )
        if len(found) > 1:
            raise Conflict(
                f"digest prefix {hex_part} is ambiguous: {len(found)} blobs match; give more digits"
            )
        return str(found[0])

    def read_blob(self, session: Session, project_id: int, digest: str) -> Blob:
        """The metadata of one blob, named by a full digest or a unique prefix (:meth:`resolve`)."""
        digest = self.resolve(session, project_id, digest)
        blob = self._find(session, project_id, digest)
        if blob is None:
            raise NotFound(
                f"project {project_id} has no blob sha256:{digest}: check the digest, "
                "or list the project's blobs"
            )
        return blob

    def list_blobs(
        self, session: Session, project_id: int, limit: int = 100, offset: int = 0
    ) -> list[Blob]:
        """The project's blobs, newest first."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidInput(f"limit must be 1..{MAX_LIST_LIMIT}, got {limit}")
        if offset < 0:
            raise InvalidInput(f"offset must be 0 or more, got {offset}")
        query = (
            select(Blob)
            .where(Blob.project_id == project_id)
            .order_by(Blob.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return list(session.scalars(query))

    def open(self, session: Session, project_id: int, digest: str) -> Iterator[bytes]:
        """The blob's plaintext as an iterator of chunks, each verified before it is yielded.

        The lookups, the header and the first chunk are read before this returns, so an
        unknown, missing or damaged blob usually raises here rather than mid-stream; the
        iterator needs no session. Blobs under one chunk are verified completely here.
        """
        blob = self.read_blob(session, project_id, digest)
        key = self._keyring.data_key(session, project_id, create=False)
        chunks = self._read(blob.project_id, blob.digest, key)
        first = next(chunks, None)
        if first is None:
            return iter(())
        return itertools.chain((first,), chunks)

    def _read(self, project_id: int, digest: str, key: bytes) -> Iterator[bytes]:
        path = self.location(project_id, digest)
        try:
            with self._fs.open(path, "rb") as f:
                header = blob_io.read_exact(f, BLOB_HEADER_BYTES)
                decryptor = BlobDecryptor(key, header, bytes.fromhex(digest))
                size = decryptor.sealed_chunk_size
                # sized to the data: small blobs stay small
                chunk: Buffer = blob_io.read_exact(f, size)
                buffer: memoryview | None = None
                while len(chunk) == size:  # the last chunk is the short one
                    yield decryptor.update(chunk)
                    buffer = buffer or memoryview(bytearray(size))  # reused: no page faults
                    chunk = buffer[: blob_io.read_into(f, buffer)]
                last = decryptor.finish(chunk)
                if last:
                    yield last
        except FileNotFoundError as error:
            raise IntegrityFailure(
                f"blob sha256:{digest} of project {project_id} is missing from storage "
                f"({path}): restore it from backup"
            ) from error
        except IntegrityFailure as error:
            raise IntegrityFailure(
                f"blob sha256:{digest} of project {project_id} failed its integrity check "
                f"({error}): restore it from backup"
            ) from error
        except Exception as error:
            if not _is_storage_error(error):
                raise
            raise Unavailable(
                f"the blob store ({self._describe}) failed while reading blob sha256:{digest} "
                f"of project {project_id}: {type(error).__name__}: {error}; try again once it "
                "is reachable"
            ) from error

    def _find(self, session: Session, project_id: int, digest: str) -> Blob | None:
        query = select(Blob).where(Blob.project_id == project_id, Blob.digest == digest)
        return session.scalar(query)


# -- helpers -------------------------------------------------------------------------------


class _Translated:
    """A file being written whose write errors come out as the store's Unavailable (the
    source's own errors, read elsewhere, pass through as they are)."""

    def __init__(self, out: Any, store: BlobStore) -> None:
        self._out = out
        self._store = store

    def write(self, data: Buffer) -> int:
        with self._store.storage_errors("uploading a blob"):
            return int(self._out.write(data))

    def flush(self) -> None:
        with self._store.storage_errors("uploading a blob"):
            self._out.flush()

    def fileno(self) -> int:
        return int(self._out.fileno())


# the packages whose exceptions mean the storage backend failed; checked by name so that a
# local store needs none of them installed
_STORAGE_PACKAGES = frozenset({"botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "urllib3"})


def _is_storage_error(error: BaseException) -> bool:
    """Whether ``error`` is a failure of the storage backend (I/O, network, object store)."""
    if isinstance(error, OSError):
        return True
    return any(k.__module__.split(".")[0] in _STORAGE_PACKAGES for k in type(error).__mro__)


def _check_labels(name: str, media_type: str) -> None:
    if len(name) > 255:
        raise InvalidInput(f"blob name is {len(name)} characters long; the limit is 255")
    if not media_type or len(media_type) > 127 or "/" not in media_type:
        raise InvalidInput(
            f"media type {media_type!r} is not a type/subtype of at most 127 characters "
            "(for example application/octet-stream)"
        )


def _remove_if_unlocked(path: str) -> int:
    """Remove a local partial file unless its writer holds it locked; 1 if removed."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # a live write owns it
        Path(path).unlink()  # while locked: a writer that just created it sees it gone
        return 1
    finally:
        os.close(fd)


def _delete_pending(session: Session) -> None:
    pending: list[tuple[BlobStore, str]] = session.info.pop(_PENDING_DELETES, [])
    session.info[_PENDING_DELETES] = []
    for store, path in pending:
        store._discard_quietly(path)  # a file left behind has no row: harmless


def _forget_pending(session: Session, _previous: Any) -> None:
    session.info[_PENDING_DELETES] = []
