"""The audit chain's encodings: the canonical bytes an entry's hash covers and a checkpoint
signs, and checking a signature. :mod:`underlay.audit` writes with them and
:mod:`underlay.audit_verify` checks with them; changing one breaks every existing chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from underlay.errors import InvalidInput

GENESIS_HASH = "0" * 64
HEAD_ID = 1  # the one audit_head row
_CHECKPOINT_KIND = "underlay.audit.checkpoint"


class HasPublicKey(Protocol):
    def public_key_bytes(self) -> bytes: ...


def canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds")


def entry_hash(entry: Any, *, seq: int | None = None) -> str:
    """SHA-256 of an entry's canonical encoding; ``entry`` is an AuditEntry or a table row."""
    fields = {
        "v": 1,
        "seq": entry.seq if seq is None else seq,
        "at": _iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "resource": entry.resource,
        "project": entry.project,
        "client": entry.client,
        "outcome": entry.outcome,
        "detail": entry.detail,
        "prev_hash": entry.prev_hash,
    }
    return hashlib.sha256(canonical(fields)).hexdigest()


def checkpoint_payload(
    seq: int, hash_: str, prev_seq: int, key_id: str, at: dt.datetime | None = None
) -> bytes:
    """The bytes a checkpoint signs: the head, the previous checkpoint's seq, the key id and
    (version 2, every checkpoint written now) the time; version 1 without it still verifies."""
    fields: dict[str, Any] = {
        "kind": _CHECKPOINT_KIND,
        "v": 1,
        "seq": seq,
        "hash": hash_,
        "prev_seq": prev_seq,
        "key_id": key_id,
    }
    if at is not None:
        fields.update(v=2, at=_iso(at))
    return canonical(fields)


def checkpoint_signed(
    key: Ed25519PublicKey,
    seq: int,
    hash_: str,
    prev_seq: int,
    key_id: str,
    at: dt.datetime,
    signature: bytes,
) -> bool:
    """Whether ``signature`` signs this checkpoint (with its time, or a version-1 one without)."""
    return any(
        _signature_ok(key, checkpoint_payload(seq, hash_, prev_seq, key_id, when), signature)
        for when in (at, None)
    )


def public_key(key: bytes | HasPublicKey) -> Ed25519PublicKey:
    raw = key if isinstance(key, bytes) else key.public_key_bytes()
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise InvalidInput(
            f"audit verification needs a raw 32-byte Ed25519 public key (got {len(raw)} bytes)"
        ) from exc


def _signature_ok(key: Ed25519PublicKey, payload: bytes, signature: bytes) -> bool:
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True
