"""Streaming pieces of the blob store: fixed-size chunks from any source, and writers that
overlap encryption with the write of the previous chunk (see :mod:`underlay.blobs`)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from cryptography.utils import Buffer

from underlay.errors import InvalidInput


class Writer:
    """Writes sealed chunks on a background thread, so hashing and encrypting the next chunk
    overlap the write of this one (hashlib, AES-GCM and file writes all release the GIL).
    At most two chunks wait, so memory stays bounded; a write error surfaces on the next
    call."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="blob-writer", daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._out.write(data)
                except BaseException as error:  # handed to the producer, which re-raises
                    self._error = error

    def write(self, data: bytes) -> None:
        self._check()
        self._queue.put(data)

    def drain(self) -> None:
        """Wait until every chunk is written; raise the writer's error, if any."""
        self._finish()
        self._check()

    def _finish(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error


class InlineWriter:
    """:class:`Writer`'s interface, writing on the caller's thread (for one-chunk blobs)."""

    def __init__(self, out: Any) -> None:
        self._out = out

    def __enter__(self) -> InlineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def write(self, data: bytes) -> None:
        self._out.write(data)

    def drain(self) -> None:
        pass


def chunks(source: BinaryIO | bytes | Iterable[bytes], size: int) -> Iterator[Buffer]:
    """Exactly ``size``-byte chunks of ``source``, then one shorter final chunk (maybe empty).

    A yielded chunk may be a view of a reused buffer: it is valid until the next one.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        yield from _iterable_chunks([source], size)
    elif hasattr(source, "readinto") or hasattr(source, "read"):
        yield from _file_chunks(source, size)  # type: ignore[arg-type]
    else:
        yield from _iterable_chunks(source, size)


def _file_chunks(source: BinaryIO, size: int) -> Iterator[Buffer]:
    chunk: Buffer = read_exact(source, size)  # sized to the data: small files stay small
    buffer: memoryview | None = None
    while len(chunk) == size:
        yield chunk
        buffer = buffer or memoryview(bytearray(size))  # reused: no page faults
        chunk = buffer[: read_into(source, buffer)]
    yield chunk


def _iterable_chunks(source: Iterable[Buffer], size: int) -> Iterator[Buffer]:
    # pieces (a request body arrives in pieces of 64-256 KiB) are gathered into one buffer,
    # allocated once and reused: a fresh 4 MiB buffer per chunk costs page faults each time
    buffer: memoryview | None = None
    filled = 0
    for piece in source:
        if not isinstance(piece, bytes | bytearray | memoryview):
            raise InvalidInput(
                f"a blob source must yield bytes, got {type(piece).__name__}: encode text first"
            )
        # bytes cannot change under us; copy anything mutable the producer might reuse
        view = memoryview(piece if isinstance(piece, bytes) else bytes(piece)).cast("B")
        if filled:
            assert buffer is not None
            take = min(size - filled, len(view))
            buffer[filled : filled + take] = view[:take]
            filled += take
            view = view[take:]
            if filled < size:
                continue
            yield buffer
            filled = 0
        while len(view) >= size:
            yield view[:size]
            view = view[size:]
        if view:
            if buffer is None:
                buffer = memoryview(bytearray(size))
            buffer[: len(view)] = view
            filled = len(view)
    yield buffer[:filled] if buffer is not None else b""


def read_into(f: Any, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``f`` as far as it goes; returns the byte count (short at EOF)."""
    filled = 0
    readinto = getattr(f, "readinto", None)
    while filled < len(buffer):
        if readinto is not None:
            n = readinto(buffer[filled:])
        else:
            data = f.read(len(buffer) - filled)
            if not isinstance(data, bytes | bytearray):
                raise InvalidInput("a blob source must be opened in binary mode")
            n = len(data)
            buffer[filled : filled + n] = data
        if not n:
            break
        filled += n
    return filled


def read_exact(f: Any, n: int) -> bytes:
    """``n`` bytes from ``f``, fewer only at the end of the file."""
    parts: list[bytes] = []
    remaining = n
    while remaining:
        data = f.read(remaining)
        if not isinstance(data, bytes | bytearray):
            raise InvalidInput("a blob source must be opened in binary mode")
        if not data:
            break
        parts.append(bytes(data) if isinstance(data, bytearray) else data)
        remaining -= len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)
