"""Kernel cryptography: envelope keys, Ed25519 signatures and streaming blob encryption.

Everything comes from the ``cryptography`` package; this module only composes its primitives.

* **Envelope encryption.** One 256-bit master key lives in a 0600 file in the home folder.
  Each project has its own 256-bit data key, stored in ``data_keys`` wrapped by the master key
  (AES-256-GCM, with the project id and the master key id as associated data, so a wrapped
  key cannot be moved to another project or passed off under another master key). Rotation
  generates a new master key and re-wraps every data key in one transaction; data is never
  re-encrypted.
* **Crash-safe rotation.** The new key is written to ``master.key.new`` before the transaction
  commits and renamed over ``master.key`` after it. A crash between the two leaves both files;
  the next load that meets a data key wrapped under the new key's id finishes the rename. A
  ``master.key.new`` that no data key references (a crash before the commit) is ignored and
  overwritten by the next rotation.
* **Locking.** Creating a data key and rotating take the same two locks in the same order:
  the database's (SQLite serialises writers already; PostgreSQL takes an advisory transaction
  lock), then a file lock beside the key file, held by a rotation until the new key file is in
  place. So no data key is ever wrapped by a master key that is about to be replaced.
* **Signatures** are Ed25519: audit checkpoints, model artifacts.
* **Streaming AEAD for blobs**, after Tink's AES-GCM-HKDF streaming design::

      header   = "ULB1" | version (1) | chunk size (u32 BE) | salt (32) | nonce prefix (7)
      blob key = HKDF-SHA256(data key, salt, info="underlay blob v1")
      chunk i  = AES-256-GCM(blob key, nonce = prefix | i (u32 BE) | last (1), plaintext i)

  Every chunk but the last holds exactly ``chunk size`` plaintext bytes and the last holds
  fewer (possibly none), so a reader knows the last chunk by its length without reading
  ahead, and a stream cut at a chunk boundary lacks its final chunk. The header is associated
  data of every chunk; the last chunk's also holds the SHA-256 of the whole plaintext, so a
  blob file copied under another digest fails. Truncation, reordering or any flipped byte
  fails authentication.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.utils import Buffer
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from underlay.config import Settings, write_secret_file
from underlay.errors import (
    IntegrityFailure,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unavailable,
)
from underlay.store.db import Database, Scope
from underlay.store.models import DataKey, Project
from underlay.store.types import utcnow

KEY_BYTES = 32
_NONCE_BYTES = 12
_KEY_ID_LABEL = b"underlay master key id v1\x00"
_SIGNING_ID_LABEL = b"underlay signing key id v1\x00"
_WRAP_LABEL = b"underlay data key v1\x00"
_DATA_KEY_LOCK = 0x756E6B79  # "unky": PostgreSQL advisory lock key for data-key writes


# -- envelope encryption -------------------------------------------------------------------


def master_key_id(key: bytes) -> str:
    """A short public id for a master key: 16 hex digits of a labelled SHA-256, never the key."""
    return hashlib.sha256(_KEY_ID_LABEL + key).hexdigest()[:16]


@dataclass(frozen=True)
class _MasterKey:
    key: bytes = field(repr=False)
    key_id: str

    @classmethod
    def generate(cls) -> _MasterKey:
        key = secrets.token_bytes(KEY_BYTES)
        return cls(key, master_key_id(key))


def _read_master(path: Path) -> _MasterKey:
    try:
        key = path.read_bytes()
    except FileNotFoundError as exc:
        raise Unavailable(
            f"master key file {path} is missing: restore it from backup "
            "(a new home folder gets one on first start)"
        ) from exc
    if len(key) != KEY_BYTES:
        raise Unavailable(
            f"master key file {path} holds {len(key)} bytes, expected {KEY_BYTES}: "
            "restore it from backup"
        )
    return _MasterKey(key, master_key_id(key))


def _wrap_aad(project_id: int, key_id: str) -> bytes:
    return _WRAP_LABEL + f"{project_id}\x00{key_id}".encode()


def _wrap(master: _MasterKey, project_id: int, data_key: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(master.key).encrypt(nonce, data_key, _wrap_aad(project_id, master.key_id))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _require_scope(session: Session, project_id: int) -> None:
    scope: Scope | None = session.info.get("scope")
    if scope is None or not scope.allows(project_id):
        raise PermissionDenied(f"this session's scope does not include project {project_id}")


def _lock_data_keys(session: Session) -> None:
    """Serialise data-key writers until the transaction ends (see the module docstring)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DATA_KEY_LOCK})
    else:
        session.connection()  # SQLite: begins the transaction, which takes the write lock


class Keyring:
    """The master key and the projects' data keys (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self._path = settings.master_key_path
        self._new_path = self._path.with_name(self._path.name + ".new")
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        self._master = _read_master(self._path)
        self._cache: dict[int, tuple[bytes, bytes]] = {}  # project -> (wrapped, data key)
        self._cache_lock = threading.Lock()

    @property
    def master_key_id(self) -> str:
        return self._master.key_id

    def data_key(self, session: Session, project_id: int, *, create: bool = True) -> bytes:
        """The project's 256-bit data key, created (in ``session``) on first use."""
        _require_scope(session, project_id)
        row = session.scalar(select(DataKey).where(DataKey.project_id == project_id))
        if row is None:
            if not create:
                raise IntegrityFailure(
                    f"project {project_id} has no data key, so its encrypted data cannot be "
                    "read: restore the data_keys table from backup"
                )
            return self._create(session, project_id)
        with self._cache_lock:
            cached = self._cache.get(project_id)
        if cached is not None and cached[0] == row.wrapped:
            return cached[1]
        if row.master_key_id != self._master.key_id:
            wanted = row.master_key_id  # another process may have rotated: re-read once
            with self._file_lock():
                self._refresh(lambda key_id: key_id == wanted)
        key = self._unwrap(self._master, row)
        with self._cache_lock:
            self._cache[project_id] = (row.wrapped, key)
        return key

    def derived_key(self, session: Session, project_id: int, purpose: str) -> bytes:
        """A 256-bit key for one ``purpose`` (``pii-tokens``...), derived from the project's
        data key with HKDF-SHA256: stable for the project, unrelated across purposes and
        projects, and destroyed with the project's data key."""
        return HKDF(
            algorithm=hashes.SHA256(),
            length=KEY_BYTES,
            salt=None,
            info=f"underlay/{project_id}/{purpose}".encode(),
        ).derive(self.data_key(session, project_id))

    def rotate(self, db: Database) -> str:
        """Re-wrap every data key under a new master key; returns the new key's id."""
        with contextlib.ExitStack() as held:
            with db.session(Scope.everything()) as session:
                _lock_data_keys(session)
                rows = session.scalars(select(DataKey).order_by(DataKey.project_id)).all()
                referenced = {row.master_key_id for row in rows}
                held.enter_context(self._file_lock())
                current = self._refresh(lambda key_id: key_id in referenced)
                keys = [self._unwrap(current, row) for row in rows]
                new = _MasterKey.generate()
                write_secret_file(self._new_path, new.key, overwrite=True)
                now = utcnow()
                for row, key in zip(rows, keys, strict=True):
                    row.wrapped = _wrap(new, row.project_id, key)
                    row.master_key_id = new.key_id
                    row.rotated_at = now
            # Committed: every data key is now wrapped by the new key; put its file in place.
            self._new_path.replace(self._path)
            _fsync_dir(self._path.parent)
            self._master = new
        return new.key_id

    def _create(self, session: Session, project_id: int) -> bytes:
        if session.get(Project, project_id) is None:
            raise NotFound(f"project {project_id} does not exist")
        _lock_data_keys(session)
        with self._file_lock():
            row = session.scalar(select(DataKey).where(DataKey.project_id == project_id))
            if row is None:  # nobody created it while we waited for the locks
                master = self._refresh(lambda key_id: _is_referenced(session, key_id))
                key = secrets.token_bytes(KEY_BYTES)
                wrapped = _wrap(master, project_id, key)
                session.add(
                    DataKey(project_id=project_id, wrapped=wrapped, master_key_id=master.key_id)
                )
                session.flush()
                return key
        return self.data_key(session, project_id)

    def _refresh(self, referenced: Callable[[str], bool]) -> _MasterKey:
        """Re-read the key file, finishing a rotation that committed but did not rename.

        The caller holds the file lock, so no rotation is half-way through.
        """
        if self._new_path.exists():
            pending = _read_master(self._new_path)
            if referenced(pending.key_id):
                self._new_path.replace(self._path)
                _fsync_dir(self._path.parent)
        self._master = _read_master(self._path)
        return self._master

    def _unwrap(self, master: _MasterKey, row: DataKey) -> bytes:
        if row.master_key_id != master.key_id:
            raise Unavailable(
                f"data key of project {row.project_id} is wrapped by master key "
                f"{row.master_key_id}, the loaded master key ({self._path}) is {master.key_id}: "
                "put back the master key file that matches, or restore it from backup"
            )
        nonce, sealed = row.wrapped[:_NONCE_BYTES], row.wrapped[_NONCE_BYTES:]
        try:
            key = AESGCM(master.key).decrypt(
                nonce, sealed, _wrap_aad(row.project_id, master.key_id)
            )
        except InvalidTag as exc:
            raise IntegrityFailure(
                f"wrapped data key of project {row.project_id} failed verification under "
                f"master key {master.key_id}: restore the data_keys table from backup"
            ) from exc
        return key

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def _is_referenced(session: Session, key_id: str) -> bool:
    query = select(DataKey.project_id).where(DataKey.master_key_id == key_id).limit(1)
    return session.scalar(query) is not None


# -- signatures ----------------------------------------------------------------------------


def signing_key_id(public_key_bytes: bytes) -> str:
    """A short id for an Ed25519 public key (16 hex digits of a labelled SHA-256)."""
    return hashlib.sha256(_SIGNING_ID_LABEL + public_key_bytes).hexdigest()[:16]


class SigningKey:
    """The platform's Ed25519 signing key, created on first use in ``signing_key_path``."""

    def __init__(self, settings: Settings) -> None:
        path = settings.signing_key_path
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            raw = Ed25519PrivateKey.generate().private_bytes_raw()
            write_secret_file(path, raw, overwrite=False)  # loses to a concurrent creator
        raw = path.read_bytes()
        if len(raw) != KEY_BYTES:
            raise Unavailable(
                f"signing key file {path} holds {len(raw)} bytes, expected {KEY_BYTES}: "
                "restore it from backup"
            )
        self._private = Ed25519PrivateKey.from_private_bytes(raw)
        self._public = self._private.public_key().public_bytes_raw()
        self.key_id = signing_key_id(self._public)

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``data``."""
        return self._private.sign(data)

    def public_key_bytes(self) -> bytes:
        """The raw 32-byte public key, for verifiers."""
        return self._public


def verify_signature(public_key_bytes: bytes, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``data`` by that public key."""
    if len(public_key_bytes) != KEY_BYTES:
        raise InvalidInput(
            f"an Ed25519 public key is {KEY_BYTES} raw bytes, got {len(public_key_bytes)}"
        )
    try:
        Ed25519PublicKey.from_public_bytes(public_key_bytes).verify(signature, data)
    except InvalidSignature:
        return False
    return True


# -- streaming AEAD for blobs --------------------------------------------------------------

BLOB_MAGIC = b"ULB1"
BLOB_VERSION = 1
BLOB_TAG_BYTES = 16
MAX_CHUNK_SIZE = 64 * 1024 * 1024
_HEADER = struct.Struct(">4sBI32s7s")
BLOB_HEADER_BYTES = _HEADER.size
_BLOB_INFO = b"underlay blob v1"
_MAX_CHUNKS = 2**32


def _blob_aead(data_key: bytes, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=_BLOB_INFO)
    return AESGCM(hkdf.derive(data_key))


class BlobEncryptor:
    """Encrypts one blob: write :attr:`header`, then :meth:`update` each full chunk, then
    :meth:`finish` the shorter remainder (possibly empty) with the plaintext's SHA-256."""

    def __init__(self, data_key: bytes, chunk_size: int) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise InvalidInput(f"blob chunk size must be 1..{MAX_CHUNK_SIZE}, got {chunk_size}")
        salt, self._prefix = os.urandom(32), os.urandom(7)
        self.chunk_size = chunk_size
        self.header = _HEADER.pack(BLOB_MAGIC, BLOB_VERSION, chunk_size, salt, self._prefix)
        self._aead = _blob_aead(data_key, salt)
        self._index = 0

    def update(self, chunk: Buffer) -> bytes:
        if len(chunk) != self.chunk_size:
            raise ValueError(f"non-final chunks hold exactly {self.chunk_size} bytes")
        return self._seal(chunk, last=False, aad=self.header)

    def finish(self, chunk: Buffer, digest: bytes) -> bytes:
        if len(chunk) >= self.chunk_size:
            raise ValueError(f"the final chunk holds fewer than {self.chunk_size} bytes")
        return self._seal(chunk, last=True, aad=self.header + digest)

    def _seal(self, chunk: Buffer, *, last: bool, aad: bytes) -> bytes:
        if self._index >= _MAX_CHUNKS:
            raise PayloadTooLarge(f"a blob holds at most {_MAX_CHUNKS} chunks")
        nonce = self._prefix + struct.pack(">IB", self._index, last)
        self._index += 1
        return self._aead.encrypt(nonce, chunk, aad)


class BlobDecryptor:
    """Decrypts one blob written by :class:`BlobEncryptor`, given its header and digest.

    Raises :class:`IntegrityFailure` with a short reason ("chunk 5") on any mismatch.
    """

    def __init__(self, data_key: bytes, header: bytes, digest: bytes) -> None:
        if len(header) != BLOB_HEADER_BYTES:
            raise IntegrityFailure("file is shorter than the blob header")
        magic, version, chunk_size, salt, self._prefix = _HEADER.unpack(header)
        if magic != BLOB_MAGIC:
            raise IntegrityFailure("not an underlay blob: bad magic bytes")
        if version != BLOB_VERSION:
            raise IntegrityFailure(f"unknown blob format version {version}")
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise IntegrityFailure(f"implausible chunk size {chunk_size} in the header")
        self.chunk_size: int = chunk_size
        self.sealed_chunk_size = chunk_size + BLOB_TAG_BYTES
        self._header = header
        self._digest = digest
        self._aead = _blob_aead(data_key, salt)
        self._index = 0

    def update(self, sealed: Buffer) -> bytes:
        """Decrypt one full, non-final chunk."""
        return self._open(sealed, last=False, aad=self._header)

    def finish(self, sealed: Buffer) -> bytes:
        """Decrypt the final chunk; this also checks the blob's digest."""
        if len(sealed) < BLOB_TAG_BYTES:
            raise IntegrityFailure(f"chunk {self._index} (the last) is missing or truncated")
        return self._open(sealed, last=True, aad=self._header + self._digest)

    def _open(self, sealed: Buffer, *, last: bool, aad: bytes) -> bytes:
        index = self._index
        if index >= _MAX_CHUNKS:
            raise IntegrityFailure(f"more than {_MAX_CHUNKS} chunks")
        nonce = self._prefix + struct.pack(">IB", index, last)
        self._index += 1
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag as exc:
            raise IntegrityFailure(f"chunk {index}") from exc


# -- small sealed values (job secrets) ----------------------------------------------------


def seal(data_key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM under a project's data key: random 96-bit nonce, then ciphertext and tag."""
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(data_key).encrypt(nonce, plaintext, aad)


def unseal(data_key: bytes, sealed: bytes, aad: bytes, what: str) -> bytes:
    """The plaintext of :func:`seal`; ``IntegrityFailure`` naming ``what`` if it was altered."""
    try:
        return AESGCM(data_key).decrypt(sealed[:12], sealed[12:], aad)
    except (InvalidTag, ValueError) as error:
        raise IntegrityFailure(f"{what} failed its integrity check") from error
