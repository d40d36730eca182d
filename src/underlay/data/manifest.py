"""What a dataset version lists: files by path, digest and size. Pure and light (the SDK
imports it): the same path rules hold on the server, which refuses a bad manifest, and in the
SDK, which never writes a file outside the folder it pulls into."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from underlay.errors import InvalidInput

MAX_PATH = 1024
_FORBIDDEN = {chr(c) for c in range(32)} | {"\x7f", "\\"}


@dataclass(frozen=True)
class FileEntry:
    """One file of a manifest."""

    path: str
    digest: str
    size: int
    media_type: str = "application/octet-stream"


def check_path(path: str) -> str:
    """``path`` if it is a safe relative POSIX path in a dataset; else :class:`InvalidInput`."""
    problem = None
    if not path or len(path) > MAX_PATH:
        problem = f"must be 1 to {MAX_PATH} characters"
    elif path.startswith("/"):
        problem = "must be relative"
    elif any(ch in _FORBIDDEN for ch in path):
        problem = "holds a control character or a backslash"
    elif any(part in ("", ".", "..") for part in path.split("/")):
        problem = "has an empty, '.' or '..' segment"
    if problem:
        raise InvalidInput(f"file path {path[:100]!r} {problem}")
    return path


def manifest_digest(files: Iterable[FileEntry]) -> str:
    """SHA-256 of the manifest in a canonical form (sorted by path): equal content, equal id."""
    canonical = [[f.path, f.digest, f.size] for f in sorted(files, key=lambda f: f.path)]
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()
