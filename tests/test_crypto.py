"""Keyring (envelope keys, rotation, crash recovery), signatures and the blob stream cipher.

Keyring tests run on SQLite and PostgreSQL through the ``db`` fixture; the rest need no
database.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest
from sqlalchemy import select, text

from tests.conftest import add_project
from underlay.config import Settings, ensure_home, write_secret_file
from underlay.crypto import (
    BlobDecryptor,
    BlobEncryptor,
    Keyring,
    SigningKey,
    master_key_id,
    signing_key_id,
    verify_signature,
)
from underlay.errors import IntegrityFailure, InvalidInput, NotFound, PermissionDenied, Unavailable
from underlay.store import Database, Scope
from underlay.store.models import DataKey


def _key(keyring: Keyring, db: Database, project_id: int) -> bytes:
    with db.session(Scope.projects(project_id)) as s:
        return keyring.data_key(s, project_id)


def _rows(db: Database) -> dict[int, DataKey]:
    with db.session(Scope.everything()) as s:
        return {row.project_id: row for row in s.scalars(select(DataKey))}


@pytest.fixture
def home_settings(tmp_path: Path) -> Settings:
    """Settings for tests that need a home folder but no database."""
    s = Settings(home=tmp_path / "home")
    ensure_home(s)
    return s


# -- keyring -------------------------------------------------------------------------------


def test_master_key_id_is_short_and_reveals_nothing(settings: Settings) -> None:
    key = settings.master_key_path.read_bytes()
    keyring = Keyring(settings)
    assert re.fullmatch(r"[0-9a-f]{16}", keyring.master_key_id)
    assert keyring.master_key_id == master_key_id(key)
    assert keyring.master_key_id not in key.hex()


def test_data_key_is_created_once_and_stored_wrapped(settings: Settings, db: Database) -> None:
    a, b = add_project(db, "a"), add_project(db, "b")
    keyring = Keyring(settings)
    key_a = _key(keyring, db, a)
    assert len(key_a) == 32
    assert _key(keyring, db, a) == key_a
    assert _key(Keyring(settings), db, a) == key_a  # another process reads the same key
    assert _key(keyring, db, b) != key_a
    rows = _rows(db)
    assert set(rows) == {a, b}
    assert key_a not in rows[a].wrapped
    assert rows[a].master_key_id == keyring.master_key_id
    assert rows[a].rotated_at is None


def test_data_key_refused_outside_the_session_scope(settings: Settings, db: Database) -> None:
    a, b = add_project(db, "a"), add_project(db, "b")
    keyring = Keyring(settings)
    with (
        pytest.raises(PermissionDenied, match=f"does not include project {b}"),
        db.session(Scope.projects(a)) as s,
    ):
        keyring.data_key(s, b)
    assert _rows(db) == {}


def test_data_key_of_unknown_project_is_not_found(settings: Settings, db: Database) -> None:
    with pytest.raises(NotFound, match="project 99 does not exist"):
        _key(Keyring(settings), db, 99)


def test_missing_data_key_is_not_created_when_reading(settings: Settings, db: Database) -> None:
    a = add_project(db, "a")
    with (
        pytest.raises(IntegrityFailure, match=f"project {a} has no data key"),
        db.session(Scope.projects(a)) as s,
    ):
        Keyring(settings).data_key(s, a, create=False)
    assert _rows(db) == {}


def test_wrapped_key_is_bound_to_its_project(settings: Settings, db: Database) -> None:
    a, b = add_project(db, "a"), add_project(db, "b")
    keyring = Keyring(settings)
    _key(keyring, db, a)
    _key(keyring, db, b)
    with db.session(Scope.everything()) as s:
        row_a, row_b = s.get(DataKey, a), s.get(DataKey, b)
        assert row_a is not None and row_b is not None
        row_a.wrapped, row_b.wrapped = row_b.wrapped, row_a.wrapped
    with pytest.raises(IntegrityFailure, match=f"data key of project {a} failed verification"):
        _key(Keyring(settings), db, a)


def test_missing_or_short_master_key_file_is_a_clear_error(settings: Settings) -> None:
    settings.master_key_path.write_bytes(b"short")
    with pytest.raises(Unavailable, match="holds 5 bytes, expected 32"):
        Keyring(settings)
    settings.master_key_path.unlink()
    with pytest.raises(Unavailable, match=r"master key file .* is missing"):
        Keyring(settings)


def test_rotation_rewraps_keys_and_refuses_the_old_key_file(
    settings: Settings, db: Database
) -> None:
    a, b = add_project(db, "a"), add_project(db, "b")
    keyring = Keyring(settings)
    keys = {a: _key(keyring, db, a), b: _key(keyring, db, b)}
    old_file, old_id = settings.master_key_path.read_bytes(), keyring.master_key_id
    before = _rows(db)

    new_id = keyring.rotate(db)

    assert new_id != old_id
    assert keyring.master_key_id == new_id
    assert master_key_id(settings.master_key_path.read_bytes()) == new_id
    assert stat.S_IMODE(settings.master_key_path.stat().st_mode) == 0o600
    assert not settings.master_key_path.with_name("master.key.new").exists()
    after = _rows(db)
    for project_id in (a, b):
        assert after[project_id].master_key_id == new_id
        assert after[project_id].wrapped != before[project_id].wrapped
        assert after[project_id].rotated_at is not None
    # the same data keys, through this keyring and through a fresh process
    assert {p: _key(keyring, db, p) for p in keys} == keys
    assert {p: _key(Keyring(settings), db, p) for p in keys} == keys

    write_secret_file(settings.master_key_path, old_file, overwrite=True)
    stale = Keyring(settings)
    message = (
        f"data key of project {a} is wrapped by master key {new_id}, "
        f"the loaded master key .* is {old_id}"
    )
    with pytest.raises(Unavailable, match=message):
        _key(stale, db, a)
    with pytest.raises(Unavailable, match="wrapped by master key"):
        stale.rotate(db)
    assert _rows(db)[a].wrapped == after[a].wrapped  # the refused rotation changed nothing


def test_rotation_by_another_process_is_picked_up(settings: Settings, db: Database) -> None:
    a = add_project(db, "a")
    mine, theirs = Keyring(settings), Keyring(settings)
    key = _key(mine, db, a)
    new_id = theirs.rotate(db)
    assert _key(mine, db, a) == key
    assert mine.master_key_id == new_id
    b = add_project(db, "b")
    _key(mine, db, b)
    assert _rows(db)[b].master_key_id == new_id


def test_rotation_interrupted_after_commit_is_finished_on_load(
    settings: Settings, db: Database
) -> None:
    a = add_project(db, "a")
    keyring = Keyring(settings)
    key = _key(keyring, db, a)
    old_file = settings.master_key_path.read_bytes()
    new_id = keyring.rotate(db)
    # The state a crash between the commit and the rename leaves behind:
    new_path = settings.master_key_path.with_name("master.key.new")
    settings.master_key_path.replace(new_path)
    write_secret_file(settings.master_key_path, old_file, overwrite=True)

    recovered = Keyring(settings)
    assert recovered.master_key_id == master_key_id(old_file)
    assert _key(recovered, db, a) == key
    assert recovered.master_key_id == new_id
    assert master_key_id(settings.master_key_path.read_bytes()) == new_id
    assert not new_path.exists()


def test_rotation_interrupted_before_commit_leaves_the_old_key_in_force(
    settings: Settings, db: Database
) -> None:
    a = add_project(db, "a")
    keyring = Keyring(settings)
    key = _key(keyring, db, a)
    old_id = keyring.master_key_id
    # The state a crash before the commit leaves behind: an unreferenced new key file.
    new_path = settings.master_key_path.with_name("master.key.new")
    write_secret_file(new_path, os.urandom(32), overwrite=True)

    fresh = Keyring(settings)
    assert _key(fresh, db, a) == key
    b = add_project(db, "b")
    _key(fresh, db, b)
    assert {row.master_key_id for row in _rows(db).values()} == {old_id}
    assert master_key_id(settings.master_key_path.read_bytes()) == old_id

    new_id = fresh.rotate(db)  # the next rotation overwrites the leftover
    assert not new_path.exists()
    assert _key(Keyring(settings), db, a) == key
    assert {row.master_key_id for row in _rows(db).values()} == {new_id}


# -- signatures ----------------------------------------------------------------------------


def test_signing_key_signs_and_verifies(home_settings: Settings) -> None:
    key = SigningKey(home_settings)
    signature = key.sign(b"checkpoint 100")
    assert len(signature) == 64
    public = key.public_key_bytes()
    assert len(public) == 32
    assert verify_signature(public, b"checkpoint 100", signature)
    assert not verify_signature(public, b"checkpoint 101", signature)
    assert not verify_signature(
        public, b"checkpoint 100", signature[:-1] + bytes([signature[-1] ^ 1])
    )
    assert not verify_signature(public, b"checkpoint 100", signature[:10])


def test_signing_key_persists_privately(home_settings: Settings) -> None:
    first = SigningKey(home_settings)
    path = home_settings.signing_key_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = SigningKey(home_settings)
    assert second.key_id == first.key_id == signing_key_id(first.public_key_bytes())
    assert re.fullmatch(r"[0-9a-f]{16}", first.key_id)
    assert verify_signature(first.public_key_bytes(), b"x", second.sign(b"x"))


def test_another_key_does_not_verify(home_settings: Settings, tmp_path: Path) -> None:
    ours = SigningKey(home_settings)
    theirs = SigningKey(Settings(home=tmp_path / "other"))
    assert theirs.key_id != ours.key_id
    assert not verify_signature(ours.public_key_bytes(), b"x", theirs.sign(b"x"))


def test_bad_key_material_is_a_clear_error(home_settings: Settings) -> None:
    with pytest.raises(InvalidInput, match="32 raw bytes, got 31"):
        verify_signature(b"k" * 31, b"x", b"s" * 64)
    home_settings.signing_key_path.write_bytes(b"k" * 31)
    with pytest.raises(Unavailable, match=r"signing key file .* holds 31 bytes"):
        SigningKey(home_settings)


# -- blob stream cipher --------------------------------------------------------------------

CHUNK = 1024


def _seal(key: bytes, data: bytes) -> tuple[bytes, list[bytes]]:
    enc = BlobEncryptor(key, CHUNK)
    full = len(data) - len(data) % CHUNK
    sealed = [enc.update(data[i : i + CHUNK]) for i in range(0, full, CHUNK)]
    sealed.append(enc.finish(data[full:], hashlib.sha256(data).digest()))
    return enc.header, sealed


def _unseal(key: bytes, header: bytes, sealed: list[bytes], digest: bytes) -> bytes:
    dec = BlobDecryptor(key, header, digest)
    parts = [dec.update(c) for c in sealed[:-1]]
    parts.append(dec.finish(sealed[-1]))
    return b"".join(parts)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7])
def test_stream_cipher_round_trip(size: int) -> None:
    key, data = os.urandom(32), os.urandom(size)
    header, sealed = _seal(key, data)
    assert len(sealed) == size // CHUNK + 1  # the last chunk is always short, maybe empty
    assert _unseal(key, header, sealed, hashlib.sha256(data).digest()) == data


def test_stream_cipher_rejects_reordering_truncation_and_a_wrong_digest() -> None:
    key, data = os.urandom(32), os.urandom(3 * CHUNK + 7)
    digest = hashlib.sha256(data).digest()
    header, sealed = _seal(key, data)
    with pytest.raises(IntegrityFailure, match="chunk 0"):
        _unseal(key, header, [sealed[1], sealed[0], *sealed[2:]], digest)
    with pytest.raises(IntegrityFailure, match="chunk 2"):
        _unseal(key, header, sealed[:-1], digest)  # cut at a chunk boundary
    with pytest.raises(IntegrityFailure, match="chunk 3"):
        _unseal(key, header, sealed, hashlib.sha256(b"other").digest())
    with pytest.raises(IntegrityFailure, match="chunk 0"):
        _unseal(os.urandom(32), header, sealed, digest)
    with pytest.raises(IntegrityFailure, match="bad magic"):
        BlobDecryptor(key, b"XXXX" + header[4:], digest)
    with pytest.raises(IntegrityFailure, match="implausible chunk size"):
        BlobDecryptor(key, header[:5] + b"\xff\xff\xff\xff" + header[9:], digest)


# -- sealed small values (job secrets, job tokens) --------------------------------------------


def test_seal_is_aes_gcm_with_a_fresh_nonce_bound_to_its_key_and_associated_data() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from underlay.crypto import seal, unseal

    key, other = os.urandom(32), os.urandom(32)
    sealed = seal(key, b"API_KEY=s3cr3t", b"job 7")
    assert len(sealed) == 12 + len(b"API_KEY=s3cr3t") + 16  # nonce, ciphertext, tag
    # the layout is nonce | AES-256-GCM(ciphertext and tag): readable by the library alone
    assert AESGCM(key).decrypt(sealed[:12], sealed[12:], b"job 7") == b"API_KEY=s3cr3t"
    again = seal(key, b"API_KEY=s3cr3t", b"job 7")
    assert again[:12] != sealed[:12] and again != sealed  # a fresh random nonce each time
    assert unseal(key, sealed, b"job 7", "secrets of job 7") == b"API_KEY=s3cr3t"
    assert unseal(key, seal(key, b"", b""), b"", "empty") == b""
    broken = {
        "another key": (other, sealed, b"job 7"),
        "other associated data": (key, sealed, b"job 8"),
        "a flipped bit": (key, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"job 7"),
        "a cut tag": (key, sealed[:-1], b"job 7"),
        "no ciphertext": (key, sealed[:12], b"job 7"),
    }
    for what, (k, data, aad) in broken.items():
        with pytest.raises(IntegrityFailure, match=r"^secrets of job 7 failed its integrity"):
            unseal(k, data, aad, "secrets of job 7")
        assert what  # each case named for the reader


# -- the formats, pinned: another implementation reading our files gets the same bytes -------
# Each test rebuilds a value from the documented layout with the library alone, so a change to
# a label, a length, a nonce layout or an order of fields fails here.


def test_key_ids_are_labelled_sha256_prefixes() -> None:
    key = bytes(range(32))
    assert (
        master_key_id(key)
        == hashlib.sha256(b"underlay master key id v1\x00" + key).hexdigest()[:16]
    )
    assert (
        signing_key_id(key)
        == hashlib.sha256(b"underlay signing key id v1\x00" + key).hexdigest()[:16]
    )


def test_a_wrapped_data_key_is_aes_gcm_bound_to_project_and_master_key(
    settings: Settings, db: Database
) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    a = add_project(db, "a")
    keyring = Keyring(settings)
    key = _key(keyring, db, a)
    row = _rows(db)[a]
    master = settings.master_key_path.read_bytes()
    aad = b"underlay data key v1\x00" + f"{a}\x00{keyring.master_key_id}".encode()
    assert len(row.wrapped) == 12 + 32 + 16  # nonce, key, tag
    assert AESGCM(master).decrypt(row.wrapped[:12], row.wrapped[12:], aad) == key
    with db.session(Scope.everything()) as s:  # a re-wrap under another label is refused
        found = s.get(DataKey, a)
        assert found is not None
        nonce = os.urandom(12)
        found.wrapped = nonce + AESGCM(master).encrypt(nonce, key, b"other label" + aad[20:])
    message = (
        f"^wrapped data key of project {a} failed verification under master key "
        f"{keyring.master_key_id}: restore the data_keys table from backup$"
    )
    with pytest.raises(IntegrityFailure, match=message):
        _key(Keyring(settings), db, a)


def test_a_derived_key_is_hkdf_of_the_data_key_per_project_and_purpose(
    settings: Settings, db: Database
) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    a = add_project(db, "a")
    keyring = Keyring(settings)
    data_key = _key(keyring, db, a)
    with db.session(Scope.projects(a)) as s:
        derived = keyring.derived_key(s, a, "pii-tokens")
    info = f"underlay/{a}/pii-tokens".encode()
    assert derived == HKDF(hashes.SHA256(), 32, None, info).derive(data_key)


def test_the_blob_format_is_the_documented_one() -> None:
    import struct

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from underlay.crypto import BLOB_HEADER_BYTES, BLOB_TAG_BYTES

    key, data = os.urandom(32), os.urandom(2 * CHUNK + 5)
    digest = hashlib.sha256(data).digest()
    header, sealed = _seal(key, data)
    assert (BLOB_HEADER_BYTES, BLOB_TAG_BYTES) == (48, 16)
    magic, version, chunk_size, salt, prefix = struct.unpack(">4sBI32s7s", header)
    assert (magic, version, chunk_size, len(header)) == (b"ULB1", 1, CHUNK, 48)
    aead = AESGCM(HKDF(hashes.SHA256(), 32, salt, b"underlay blob v1").derive(key))
    plain = [
        aead.decrypt(prefix + struct.pack(">IB", 0, 0), sealed[0], header),
        aead.decrypt(prefix + struct.pack(">IB", 1, 0), sealed[1], header),
        aead.decrypt(prefix + struct.pack(">IB", 2, 1), sealed[2], header + digest),
    ]
    assert b"".join(plain) == data
    assert [len(c) for c in sealed] == [CHUNK + 16, CHUNK + 16, 5 + 16]
    # a fresh salt and nonce prefix for every blob
    again, _ = _seal(key, data)
    assert again[9:41] != header[9:41] and again[41:] != header[41:]


def test_the_stream_cipher_refuses_bad_chunk_sizes_and_headers_naming_the_problem() -> None:
    from underlay.crypto import MAX_CHUNK_SIZE

    key = os.urandom(32)
    assert MAX_CHUNK_SIZE == 64 * 1024 * 1024
    bounds = f"^blob chunk size must be 1..{MAX_CHUNK_SIZE}, got "
    for bad in (0, -1, MAX_CHUNK_SIZE + 1):
        with pytest.raises(InvalidInput, match=bounds + f"{bad}$"):
            BlobEncryptor(key, bad)
    assert BlobEncryptor(key, 1).chunk_size == 1
    assert BlobEncryptor(key, MAX_CHUNK_SIZE).chunk_size == MAX_CHUNK_SIZE
    enc = BlobEncryptor(key, CHUNK)
    with pytest.raises(ValueError, match=f"^non-final chunks hold exactly {CHUNK} bytes$"):
        enc.update(b"x" * (CHUNK - 1))
    with pytest.raises(ValueError, match=f"^the final chunk holds fewer than {CHUNK} bytes$"):
        enc.finish(b"x" * CHUNK, b"d" * 32)
    header = enc.header
    digest = b"d" * 32
    with pytest.raises(IntegrityFailure, match=r"^file is shorter than the blob header$"):
        BlobDecryptor(key, header[:-1], digest)
    with pytest.raises(IntegrityFailure, match=r"^not an underlay blob: bad magic bytes$"):
        BlobDecryptor(key, b"ULB2" + header[4:], digest)
    with pytest.raises(IntegrityFailure, match=r"^unknown blob format version 2$"):
        BlobDecryptor(key, header[:4] + b"\x02" + header[5:], digest)
    for size in (0, MAX_CHUNK_SIZE + 1):
        bad_size = header[:5] + size.to_bytes(4, "big") + header[9:]
        with pytest.raises(
            IntegrityFailure, match=f"^implausible chunk size {size} in the header$"
        ):
            BlobDecryptor(key, bad_size, digest)
    for size in (1, MAX_CHUNK_SIZE):
        ok = BlobDecryptor(key, header[:5] + size.to_bytes(4, "big") + header[9:], digest)
        assert (ok.chunk_size, ok.sealed_chunk_size) == (size, size + 16)
    dec = BlobDecryptor(key, header, digest)
    with pytest.raises(IntegrityFailure, match=r"^chunk 0 \(the last\) is missing or truncated$"):
        dec.finish(b"t" * 15)
    with pytest.raises(IntegrityFailure, match=r"^chunk 0$"):
        dec.finish(b"t" * 16)  # a tag's length, but not the tag


def test_a_blob_holds_at_most_2_to_the_32_chunks() -> None:
    from underlay.errors import PayloadTooLarge

    key = os.urandom(32)
    enc = BlobEncryptor(key, 4)
    dec = BlobDecryptor(key, enc.header, b"d" * 32)
    # the counters are the only state: set them where a 16 GiB blob of 4-byte chunks would be
    enc._index = dec._index = 2**32 - 1
    sealed = enc.update(b"abcd")
    assert dec.update(sealed) == b"abcd"
    with pytest.raises(PayloadTooLarge, match=f"^a blob holds at most {2**32} chunks$"):
        enc.update(b"abcd")
    with pytest.raises(IntegrityFailure, match=f"^more than {2**32} chunks$"):
        dec.update(sealed)


def test_master_and_signing_key_files_are_refused_with_the_whole_message(
    settings: Settings,
) -> None:
    path = settings.master_key_path
    path.write_bytes(b"k" * 33)
    with pytest.raises(Unavailable) as short:
        Keyring(settings)
    assert short.value.message == (
        f"master key file {path} holds 33 bytes, expected 32: restore it from backup"
    )
    path.unlink()
    with pytest.raises(Unavailable) as missing:
        Keyring(settings)
    assert missing.value.message == (
        f"master key file {path} is missing: restore it from backup "
        "(a new home folder gets one on first start)"
    )
    signing = settings.signing_key_path
    signing.parent.mkdir(parents=True, exist_ok=True)
    signing.write_bytes(b"k" * 33)
    with pytest.raises(Unavailable) as bad:
        SigningKey(settings)
    assert bad.value.message == (
        f"signing key file {signing} holds 33 bytes, expected 32: restore it from backup"
    )
    with pytest.raises(InvalidInput) as public:
        verify_signature(b"k" * 33, b"x", b"s" * 64)
    assert public.value.message == "an Ed25519 public key is 32 raw bytes, got 33"


def test_a_signing_key_is_created_in_a_private_folder_and_never_overwritten(
    tmp_path: Path,
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    settings = Settings(home=tmp_path / "not" / "yet")  # no home folder, nor its parent
    key = SigningKey(settings)
    folder = settings.signing_key_path.parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    raw = settings.signing_key_path.read_bytes()
    public = Ed25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    assert key.public_key_bytes() == public
    assert key.key_id == signing_key_id(public)
    assert SigningKey(settings).public_key_bytes() == public
    assert settings.signing_key_path.read_bytes() == raw


def test_processes_creating_the_signing_key_at_once_all_get_the_same_key(tmp_path: Path) -> None:
    import threading

    settings = Settings(home=tmp_path / "home")
    start = threading.Barrier(8)
    publics: list[bytes] = []

    def create() -> None:
        start.wait()
        publics.append(SigningKey(settings).public_key_bytes())

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the first writer wins; the others read its key instead of replacing it
    assert publics == [SigningKey(settings).public_key_bytes()] * 8


def _crash_after_rotation_commit(settings: Settings, db: Database) -> tuple[int, bytes, str]:
    """The state a crash between the rotation's commit and its rename leaves behind."""
    a = add_project(db, "a")
    keyring = Keyring(settings)
    key = _key(keyring, db, a)
    old_file = settings.master_key_path.read_bytes()
    new_id = keyring.rotate(db)
    settings.master_key_path.replace(settings.master_key_path.with_name("master.key.new"))
    write_secret_file(settings.master_key_path, old_file, overwrite=True)
    return a, key, new_id


def test_a_new_data_key_after_an_unfinished_rotation_uses_the_committed_key(
    settings: Settings, db: Database
) -> None:
    a, key, new_id = _crash_after_rotation_commit(settings, db)
    b = add_project(db, "b")
    recovered = Keyring(settings)
    key_b = _key(recovered, db, b)  # the first thing this process does: create a data key
    assert _rows(db)[b].master_key_id == new_id
    assert master_key_id(settings.master_key_path.read_bytes()) == new_id
    assert not settings.master_key_path.with_name("master.key.new").exists()
    assert _key(Keyring(settings), db, a) == key
    assert _key(Keyring(settings), db, b) == key_b


def test_a_rotation_after_an_unfinished_one_finishes_it_first(
    settings: Settings, db: Database
) -> None:
    a, key, new_id = _crash_after_rotation_commit(settings, db)
    newest = Keyring(settings).rotate(db)  # the first thing this process does: rotate
    assert newest != new_id
    assert _rows(db)[a].master_key_id == newest
    assert _key(Keyring(settings), db, a) == key


@pytest.mark.postgres
def test_a_data_key_created_while_another_creator_held_the_lock_is_read_not_made_twice(
    tmp_path: Path, pg_url: str
) -> None:
    """PostgreSQL: two creators of one project's data key both find none; the second waits
    on the data-key lock, then reads the first one's key instead of writing another."""
    import threading
    import time

    from tests.conftest import _reset_pg

    _reset_pg(pg_url)
    settings = Settings(home=tmp_path / "home", store={"url": pg_url})
    ensure_home(settings)
    db = Database(pg_url)
    db.migrate(lock_dir=settings.home)
    try:
        a = add_project(db, "a")
        first, second = Keyring(settings), Keyring(settings)
        got: list[bytes] = []
        with db.session(Scope.projects(a)) as holder:
            holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": 0x756E6B79})
            waiter = threading.Thread(target=lambda: got.append(_key(second, db, a)))
            waiter.start()
            deadline = time.monotonic() + 30
            waiting = 0
            while not waiting and time.monotonic() < deadline:  # the second creator is blocked
                waiting = holder.execute(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    )
                ).scalar_one()
                time.sleep(0.01)
            assert waiting == 1, "the second creator did not wait on the data-key lock"
            key = first.data_key(holder, a)  # created under the lock this session holds
        waiter.join()
        assert got == [key]
        assert list(_rows(db)) == [a]
    finally:
        db.dispose()
