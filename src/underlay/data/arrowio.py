"""Arrow IPC streams over HTTP: write one as byte chunks, read one from byte chunks.

Light: pyarrow is imported by the callers, never at import time of the SDK."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any


class _Sink:
    """A writable file that hands over what was written since the last :meth:`take`."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the end-of-stream marker of the IPC format


def ipc_chunks(schema: Any, batches: Iterable[Any]) -> Iterator[bytes | memoryview]:
    """The IPC stream of ``batches`` (``schema`` first), one chunk per batch.

    Each batch is one encapsulated IPC message serialised by Arrow into a buffer that is
    handed on as it is, with no copy in Python; a schema with dictionary columns (whose
    dictionaries need messages of their own) goes through Arrow's stream writer instead."""

    if any(_has_dictionary(field.type) for field in schema):
        yield from _written_chunks(schema, batches)
        return
    yield memoryview(schema.serialize())
    for batch in batches:
        yield memoryview(batch.serialize())
    yield EOS


def _has_dictionary(kind: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        return True
    return any(_has_dictionary(kind.field(i).type) for i in range(kind.num_fields))


def _written_chunks(schema: Any, batches: Iterable[Any]) -> Iterator[bytes]:
    import pyarrow as pa

    sink = _Sink()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), schema) as writer:
        yield sink.take()
        for batch in batches:
            writer.write_batch(batch)
            yield sink.take()
    yield sink.take()


def as_reader(data: Any) -> Any:
    """A pyarrow RecordBatchReader over a pyarrow Table or reader, or a pandas DataFrame."""
    import pyarrow as pa

    if isinstance(data, pa.RecordBatchReader):
        return data
    if not isinstance(data, pa.Table):
        data = pa.Table.from_pandas(data, preserve_index=False)
    return pa.RecordBatchReader.from_batches(data.schema, data.to_batches())


class ChunkFile:
    """A read-only file over an iterator of byte chunks (for pyarrow's IPC reader).

    The chunks are kept as they came and each read joins just the bytes it asks for (one
    copy), so a large record batch costs no more than its own size to hand over."""

    closed = False

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._parts: deque[bytes] = deque()
        self._offset = 0  # how much of the first part was read already
        self._held = 0  # unread bytes in the parts

    def read(self, size: int = -1) -> bytes:
        while size < 0 or self._held < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            if chunk:
                self._parts.append(chunk)
                self._held += len(chunk)
        size = self._held if size < 0 else min(size, self._held)
        out: list[bytes | memoryview] = []
        need = size
        while need:
            part, start = self._parts[0], self._offset
            available = len(part) - start
            if available <= need:
                out.append(memoryview(part)[start:] if start else part)
                self._parts.popleft()
                self._offset = 0
                need -= available
            else:
                out.append(memoryview(part)[start : start + need])
                self._offset += need
                need = 0
        self._held -= size
        if len(out) == 1 and isinstance(out[0], bytes):
            return out[0]
        return b"".join(out)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


def json_default(value: Any) -> Any:
    """``json.dumps`` ``default`` for Arrow values: decimals as numbers (an integral one as an
    int: DuckDB sums integers into 128-bit decimals), dates and times as ISO text, bytes as
    hex, anything else as its text."""
    import datetime as dt
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
