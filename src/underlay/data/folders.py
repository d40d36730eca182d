"""A folder of CSV, Parquet or JSON-lines files written to a table as one version.

The client picks the files (:func:`select_files`): every file of a supported format under the
folder, recursively, sorted by path, less hidden files and folders and what the folder's
``.underlayignore`` excludes (gitignore syntax, as for job working folders); all must be of
one format. It streams them in one request body, one *frame* after another
(:func:`frames`)::

    frame := name length (4 bytes, big-endian) | name (UTF-8, the path in the folder)
             | size (8 bytes, big-endian) | size bytes of the file

The server reads the frames back (:func:`read_frames`) and stages each file on disk before it
parses any, so both sides hold one chunk in memory at a time and the server owns the parsing,
line numbers and quarantine.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from underlay.errors import InvalidInput

SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CHUNK = 1 << 20
MAX_NAME = 1024
MAX_FILES = 100_000
_HEAD = struct.Struct(">I")
_SIZE = struct.Struct(">Q")


def format_of(name: str) -> str | None:
    """The format a file's suffix names, or None for a file that is not data."""
    return SUFFIXES.get(Path(name).suffix.lower())


def select_files(root: Path, fmt: str | None = None) -> tuple[str, list[tuple[str, Path]]]:
    """(format, [(path in the folder, file)]) of the data files under ``root``, sorted by path.

    Refused (:class:`InvalidInput`) when they are of several formats (naming them), when
    ``fmt`` is given and differs, or when there is none."""
    from underlay.cli.workdir import select

    found: dict[str, list[str]] = {}
    files: list[tuple[str, Path]] = []
    for rel in select(root).paths:
        path = root / rel
        kind = format_of(rel)
        hidden = any(part.startswith(".") for part in rel.split("/"))
        if kind is None or hidden or path.is_symlink() or not path.is_file():
            continue
        found.setdefault(kind, []).append(rel)
        files.append((rel, path))
    if not files:
        raise InvalidInput(
            f"{root} holds no CSV, Parquet or JSON-lines file (.csv, .parquet, .jsonl, .ndjson)"
        )
    if len(found) > 1:
        listed = "; ".join(
            f"{kind}: {', '.join(names[:3])}{' …' if len(names) > 3 else ''}"
            for kind, names in sorted(found.items())
        )
        raise InvalidInput(f"{root} holds files of several formats ({listed}): use one format")
    (kind,) = found
    if fmt is not None and fmt != kind:
        raise InvalidInput(f"{root} holds {kind} files, not {fmt}")
    files.sort(key=lambda item: item[0])
    return kind, files


def frames(files: Iterable[tuple[str, Path]]) -> Iterator[bytes]:
    """The body of a folder upload: each file as a frame, read a chunk at a time."""
    for rel, path in files:
        name = rel.encode()
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            yield _HEAD.pack(len(name)) + name + _SIZE.pack(size)
            left = size
            while left:
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    raise InvalidInput(f"{path} shrank while it was being sent")
                left -= len(chunk)
                yield chunk


class _Body:
    """Exact reads over an iterator of chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def at_end(self) -> bool:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return True
            self._buffer = bytes(chunk)
        return False

    def pieces(self, size: int) -> Iterator[bytes]:
        """The next ``size`` bytes, in pieces as they come."""
        left = size
        while left:
            if self.at_end():
                raise InvalidInput("the upload broke off before its end: nothing was written")
            piece, self._buffer = self._buffer[:left], self._buffer[left:]
            left -= len(piece)
            yield piece

    def exact(self, size: int) -> bytes:
        return b"".join(self.pieces(size))


def read_frames(chunks: Iterator[bytes]) -> Iterator[tuple[str, Iterator[bytes]]]:
    """(path in the folder, its content in pieces) for each frame of a folder upload; each
    content must be consumed before the next frame is asked for."""
    body = _Body(chunks)
    count = 0
    while not body.at_end():
        count += 1
        if count > MAX_FILES:
            raise InvalidInput(f"a folder upload holds at most {MAX_FILES} files")
        (length,) = _HEAD.unpack(body.exact(_HEAD.size))
        if not 0 < length <= MAX_NAME:
            raise InvalidInput("the folder upload is malformed: a file name of a bad length")
        try:
            name = body.exact(length).decode()
        except UnicodeDecodeError:
            raise InvalidInput("the folder upload is malformed: a file name is not UTF-8") from None
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            raise InvalidInput("the folder upload is malformed: a file name has control characters")
        (size,) = _SIZE.unpack(body.exact(_SIZE.size))
        content = body.pieces(size)
        yield name, content
        for _ in content:  # whatever the caller left unread
            pass
