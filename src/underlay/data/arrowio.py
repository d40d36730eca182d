"""Arrow IPC streams over HTTP: write one as byte chunks, read one from byte chunks.

Light: pyarrow is imported by the callers, never at import time of the SDK."""

from __future__ import annotations

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


def ipc_chunks(schema: Any, batches: Iterable[Any]) -> Iterator[bytes]:
    """The IPC stream of ``batches`` (``schema`` first), one chunk per batch."""
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
    """A read-only file over an iterator of byte chunks (for pyarrow's IPC reader)."""

    closed = False

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

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
