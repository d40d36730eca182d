"""Signed manifests of model versions: what is signed, and how a reader checks it.

At registration the platform writes a manifest, canonical JSON (sorted keys, no spaces)::

    {"kind": "underlay.model.manifest", "v": 1, "project_id": 4, "model": "churn",
     "version": 3, "run": "17", "path": "model", "flavor": "sklearn",
     "files": [{"path": "model.skops", "sha256": "…", "size": 1234}, …]}

and signs those exact bytes with the platform's Ed25519 key (:class:`underlay.crypto.
SigningKey`, the key that signs audit checkpoints). The bytes and the signature are stored on
the version row; nothing is re-serialised before checking. The manifest names its project,
model and version, so a validly signed manifest cannot be moved to another version. Loading
checks, in order: a signature is there, it was made by the key the reader trusts, it verifies
over the manifest, the manifest describes this version, and each file's bytes hash to the
manifest's digest. The first failure is an :class:`ArtifactRefused` naming the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from underlay.data.manifest import check_path
from underlay.errors import IntegrityFailure

KIND = "underlay.model.manifest"
MANIFEST_NAME = "MANIFEST"  # how a refusal names the manifest itself


class ArtifactRefused(IntegrityFailure):
    """A model artifact failed verification; ``file`` names the file (or ``MANIFEST``).

    It travels as an ``integrity-failure`` problem with a ``file`` member, so the client
    raises an :class:`IntegrityFailure` whose ``extra["file"]`` names the file."""

    def __init__(self, message: str, file: str, **extra: Any) -> None:
        super().__init__(message, file=file, **extra)
        self.file = file


@dataclass(frozen=True)
class ManifestFile:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    project_id: int
    model: str
    version: int
    run: str
    path: str
    flavor: str
    files: list[ManifestFile]

    def to_bytes(self) -> bytes:
        body = {
            "kind": KIND,
            "v": 1,
            "project_id": self.project_id,
            "model": self.model,
            "version": self.version,
            "run": self.run,
            "path": self.path,
            "flavor": self.flavor,
            "files": [
                {"path": f.path, "sha256": f.sha256, "size": f.size}
                for f in sorted(self.files, key=lambda f: f.path)
            ],
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, what: str) -> Manifest:
        try:
            raw = json.loads(data.decode("utf-8"))
            if not isinstance(raw, dict) or raw.get("kind") != KIND or raw.get("v") != 1:
                raise ValueError("not a version-1 model manifest")
            files = [
                ManifestFile(check_path(str(f["path"])), str(f["sha256"]), int(f["size"]))
                for f in raw["files"]
            ]
            return cls(
                project_id=int(raw["project_id"]),
                model=str(raw["model"]),
                version=int(raw["version"]),
                run=str(raw["run"]),
                path=str(raw["path"]),
                flavor=str(raw["flavor"]),
                files=files,
            )
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise ArtifactRefused(
                f"the manifest of {what} is unreadable ({exc}): load refused", MANIFEST_NAME
            ) from None


def check_signature(
    manifest: bytes,
    signature: bytes | None,
    key_id: str,
    public_key: bytes,
    trusted_key_id: str,
    what: str,
) -> None:
    """Raise :class:`ArtifactRefused` unless ``signature`` by the trusted key signs
    ``manifest``."""
    if not signature:
        raise ArtifactRefused(
            f"{what} is not signed: its manifest carries no signature; load refused",
            MANIFEST_NAME,
        )
    if key_id != trusted_key_id:
        raise ArtifactRefused(
            f"{what} was signed by key {key_id!r}, not by this platform's key "
            f"{trusted_key_id!r}: load refused",
            MANIFEST_NAME,
        )
    if not _verifies(public_key, manifest, signature):
        raise ArtifactRefused(
            f"the signature of {what} does not verify over its manifest (key {key_id}): the "
            "record was altered after signing; load refused",
            MANIFEST_NAME,
        )


def check_binding(manifest: Manifest, project_id: int, model: str, version: int, what: str) -> None:
    """The signed manifest must describe this very version."""
    if (manifest.project_id, manifest.model, manifest.version) != (project_id, model, version):
        raise ArtifactRefused(
            f"the signed manifest of {what} describes {manifest.model!r} version "
            f"{manifest.version} of project {manifest.project_id}: load refused",
            MANIFEST_NAME,
        )


def check_file(entry: ManifestFile, data_digest: str, size: int, what: str) -> None:
    if data_digest != entry.sha256 or size != entry.size:
        raise ArtifactRefused(
            f"file {entry.path!r} of {what} does not match its signed manifest "
            f"(expected sha256:{entry.sha256[:16]}…, {entry.size} bytes; got "
            f"sha256:{data_digest[:16]}…, {size} bytes): load refused",
            entry.path,
        )


def _verifies(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Ed25519 verification; light (the SDK imports this module), no kernel imports."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
