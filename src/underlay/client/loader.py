"""Loaders: a table version streamed into training as Arrow batches, NumPy arrays or a PyTorch
``IterableDataset``, sharded across workers, shuffled by a seed, prefetched on a thread.

How the work is split (the design decision): the server deals out *pieces*, the row groups
of the version's Parquet files (underlay.data.pieces). One request streams one shard of one
epoch: the pieces in the order of the seed and epoch, every ``world``-th from ``index``, as
the bytes of their column chunks just as they lie in the files (and each file's footer once),
so the server only reads and sends; here pyarrow decodes each piece, while a thread receives
the next one. Then the rows of consecutive pieces are mixed within a bounded buffer
(``shuffle_buffer`` rows, a NumPy permutation seeded by seed, epoch and shard), then cut into
batches of exactly ``batch_size`` rows (the last may be short, or dropped). Memory stays
bounded by the buffer and ``prefetch`` batches whatever the table's size, and the same seed,
epoch and shards give the same batches on any machine (with the same NumPy: its permutation
streams may change between its versions).

A loader pins its version when it is made (the published one unless ``name@3`` names one),
so workers and epochs read the same rows even while new versions are written.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from underlay.data.pieces import Shard
from underlay.errors import InvalidInput

if TYPE_CHECKING:
    import pyarrow as pa

    from underlay.client.client import Client
    from underlay.client.torch_loader import TableDataset

T = TypeVar("T")
_END = object()


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class BatchIterator(Generic[T]):
    """Batches produced ``prefetch`` ahead on a background thread (none when 0).

    An error of the producer is raised here, to the consumer. :meth:`close` (or leaving a
    ``with`` block, or dropping the iterator) stops the thread and the HTTP stream."""

    def __init__(self, source: Iterator[T], prefetch: int) -> None:
        self._source = source
        self._done = False
        self._thread: threading.Thread | None = None
        if prefetch > 0:
            self._queue: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
            self._stop = threading.Event()
            # the thread holds no reference to this iterator: one dropped unfinished is
            # collected, and closing it stops the thread
            self._thread = threading.Thread(
                target=_produce,
                args=(source, self._queue, self._stop),
                name="underlay-loader",
                daemon=True,
            )
            self._thread.start()

    def __iter__(self) -> BatchIterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        if self._thread is None:
            try:
                return next(self._source)
            except BaseException:
                self.close()
                raise
        item = self._queue.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        result: T = item
        return result

    def __enter__(self) -> BatchIterator[T]:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """Whether the background thread is still alive."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop producing: the thread ends and the HTTP stream is closed."""
        if self._done:
            return
        self._done = True
        if self._thread is None:
            _close(self._source)
            return
        self._stop.set()  # the producer sees it at its next batch, closes the stream, ends
        self._thread.join()
        self._queue = queue.Queue()  # what it had read ahead is let go


def _produce(source: Iterator[Any], out: queue.Queue[Any], stop: threading.Event) -> None:
    """The background thread: ``source`` into ``out`` until the end, an error or ``stop``."""

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in source:
            if not put(item):
                return
        put(_END)
    except BaseException as error:
        put(_Failure(error))
    finally:
        _close(source)  # in this thread, where the generator runs


def _close(source: Iterator[Any]) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        close()


class TableLoader:
    """A table version for training; make one with :meth:`underlay.client.Client.loader`.

    ``batches()`` yields pyarrow RecordBatches of ``batch_size`` rows, ``numpy()`` dicts of
    column name to NumPy array, ``torch()`` a ``torch.utils.data.IterableDataset``. Call
    :meth:`set_epoch` before each epoch for a new order (as with ``DistributedSampler``)."""

    def __init__(
        self,
        client: Client,
        project: str,
        table: str,
        *,
        version: int,
        rows: int,
        batch_size: int,
        columns: list[str] | None,
        shuffle: bool,
        seed: int,
        shard: tuple[int, int] | None,
        prefetch: int,
        drop_last: bool,
        shuffle_buffer: int,
    ) -> None:
        self._client: Client | None = client
        self._pid = os.getpid()
        self._connect = client._connect
        self.project = project
        self.table = table
        self.version = version
        self.rows = rows
        self.batch_size = batch_size
        self.columns = columns
        self.shuffle = shuffle
        self.seed = seed
        self.shard = shard
        self.prefetch = prefetch
        self.drop_last = drop_last
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration follows (with ``shuffle``)."""
        if epoch < 0:
            raise InvalidInput(f"epoch must be at least 0, not {epoch}")
        self.epoch = epoch

    def batches(self) -> BatchIterator[pa.RecordBatch]:
        """This loader's shard of the epoch as record batches of ``batch_size`` rows."""
        return BatchIterator(self._produce(self._own_shard(), lambda b: b), self.prefetch)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return self.batches()

    def numpy(self) -> BatchIterator[dict[str, Any]]:
        """As :meth:`batches`, each batch a dict of column name to NumPy array (nulls in a
        numeric column make it float with NaN, as pyarrow's ``to_numpy`` does)."""
        return BatchIterator(self._produce(self._own_shard(), to_numpy), self.prefetch)

    def torch(self) -> TableDataset:
        """A ``torch.utils.data.IterableDataset`` of dicts of tensors, one per batch: give it
        to a ``DataLoader`` with ``batch_size=None``. Each DataLoader worker reads its own
        shard, so the workers (of every rank) together read every row once per epoch."""
        try:
            from underlay.client.torch_loader import TableDataset
        except ImportError as error:
            raise InvalidInput(
                f"torch is not installed ({error}): pip install 'underlay[torch]'"
            ) from None
        return TableDataset(self)

    # -- for torch_loader and worker processes ---------------------------------------------

    def iterate(self, shard: Shard, convert: Callable[[pa.RecordBatch], T]) -> BatchIterator[T]:
        """Shard ``shard`` of the current epoch, each batch passed through ``convert``."""
        return BatchIterator(self._produce(shard, convert), self.prefetch)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None  # a worker process connects anew
        return state

    def _own_shard(self) -> Shard:
        return Shard(*self.shard) if self.shard is not None else Shard()

    def _connection(self) -> Client:
        if self._client is None or self._pid != os.getpid():
            from underlay.client.client import Client

            url, token, verify, timeout_s, retry_budget_s = self._connect
            self._client = Client(
                url, token, verify=verify, timeout_s=timeout_s, retry_budget_s=retry_budget_s
            )
            self._pid = os.getpid()
        return self._client

    def _produce(self, shard: Shard, convert: Callable[[pa.RecordBatch], T]) -> Iterator[T]:
        params: dict[str, Any] = {
            "version": self.version,
            "shard": f"{shard.index}/{shard.world}",
        }
        if self.columns:
            params["columns"] = ",".join(self.columns)
        if self.shuffle:
            params["seed"] = self.seed
            params["epoch"] = self.epoch
        path = f"/projects/{self.project}/tables/{self.table}/pieces/raw"
        stream = _pieces(self._connection(), path, params, ahead=self.prefetch > 0)
        try:
            schema = next(stream)
            batches: Iterator[pa.RecordBatch] = stream
            if self.shuffle:
                batches = _mixed(batches, self.shuffle_buffer, (self.seed, self.epoch, shard))
            for batch in rebatch(batches, schema, self.batch_size, self.drop_last):
                yield convert(batch)
        finally:
            _close(stream)


def _pieces(client: Client, path: str, params: dict[str, Any], *, ahead: bool) -> Iterator[Any]:
    """The schema, then the record batches of the pieces ``GET path`` sends as Parquet bytes
    (frames: see underlay.data.pieces), each decoded here by pyarrow; with ``ahead``, the next
    piece is received on a thread of its own while one is decoded."""
    import httpx
    import pyarrow as pa

    from underlay.client.client import _raise_for_problem
    from underlay.errors import IntegrityFailure, Unavailable

    http = client._http
    try:
        with http.stream("GET", path, params=params) as response:
            if not response.is_success:
                response.read()
                _raise_for_problem(response)
            # a thread receives the next piece while this one is decoded (Arrow's decoding
            # leaves the GIL): one piece waits, at most, besides the two being worked on
            frames = _frames(_Bytes(response.iter_bytes()))
            received = BatchIterator(frames, prefetch=1 if ahead else 0)
            try:
                yield from _decode(received)
            finally:
                received.close()
    except httpx.TransportError as exc:
        raise Unavailable(f"cannot reach the server at {http.base_url}: {exc}") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise IntegrityFailure(f"the piece stream is broken: {exc}") from exc


class _Bytes:
    """Exact reads over an iterator of byte chunks, copied once, into the reader's buffer."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._rest = memoryview(b"")

    def exact(self, size: int) -> Any:
        """The next ``size`` bytes, as a pyarrow Buffer of Arrow's memory pool (which is
        reused from piece to piece: fresh memory costs page faults)."""
        import pyarrow as pa

        out = pa.allocate_buffer(size)
        self.into(memoryview(out).cast("B"))
        return out

    def into(self, target: memoryview) -> None:
        from underlay.errors import IntegrityFailure

        filled, size = 0, len(target)
        while filled < size:
            if not self._rest:
                chunk = next(self._chunks, None)
                if chunk is None:
                    raise IntegrityFailure("the piece stream broke off")
                self._rest = memoryview(chunk)
                continue
            take = min(len(self._rest), size - filled)
            target[filled : filled + take] = self._rest[:take]
            self._rest = self._rest[take:]
            filled += take


@dataclass
class _File:
    size: int
    tail: Any  # pa.Buffer: the footer and the last 8 bytes
    metadata: Any  # pq.FileMetaData


@dataclass
class _Piece:
    file: _File
    row_group: int
    ranges: list[tuple[int, Any]]  # (offset, pa.Buffer), the column chunks


def _frames(data: _Bytes) -> Iterator[Any]:
    """The schema, then a _Piece or a list of record batches (a piece decoded by the server)
    for each piece, from the frames of a piece stream."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from underlay.data import pieces as frames
    from underlay.errors import IntegrityFailure

    files: dict[int, _File] = {}
    ranges: list[tuple[int, Any]] = []
    while True:
        kind, number, length, argument = frames.FRAME.unpack(data.exact(frames.FRAME.size))
        payload = data.exact(length) if length else None
        if kind == frames.SCHEMA:
            yield pa.ipc.read_schema(payload)
        elif kind == frames.FOOTER:
            metadata = pq.read_metadata(pa.BufferReader(payload))
            files[number] = _File(argument, payload, metadata)
        elif kind == frames.RANGE:
            ranges.append((argument, payload))
        elif kind == frames.PIECE and number in files:
            yield _Piece(files[number], argument, ranges)
            ranges = []
        elif kind == frames.ARROW:
            yield list(pa.ipc.open_stream(payload))
        elif kind == frames.END:
            return
        else:
            raise IntegrityFailure(f"the piece stream holds an unknown frame ({kind})")


def _decode(items: Iterator[Any]) -> Iterator[Any]:
    """The schema, then the record batches of each piece ``items`` holds."""
    import pyarrow.parquet as pq

    schema = next(items)
    yield schema
    names = schema.names
    for item in items:
        if isinstance(item, list):
            yield from item
            continue
        source = _SparseFile(item)
        parquet = pq.ParquetFile(source, metadata=item.file.metadata, pre_buffer=True)
        table = parquet.read_row_group(item.row_group, columns=names, use_threads=True)
        table = table.select(names)
        if not table.schema.equals(schema):
            table = table.cast(schema)
        yield from table.to_batches()


class _SparseFile:
    """A read-only Parquet file of which only a piece's column chunks and the footer are held:
    what pyarrow reads to decode that row group."""

    closed = False

    def __init__(self, piece: _Piece) -> None:
        file = piece.file
        self._size = file.size
        self._spans = [*piece.ranges, (file.size - file.tail.size, file.tail)]
        self._at = 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = 0) -> int:
        self._at = offset if whence == 0 else (self._at if whence == 1 else self._size) + offset
        return self._at

    def size(self) -> int:
        return self._size

    def read_buffer(self, size: int = -1) -> Any:
        from underlay.errors import IntegrityFailure

        at = self._at
        end = self._size if size < 0 else min(at + size, self._size)
        for start, buffer in self._spans:
            if start <= at and end <= start + buffer.size:
                self._at = end
                return buffer.slice(at - start, end - at)
        raise IntegrityFailure(f"the piece stream lacks bytes {at}-{end} the reader wants")

    def read(self, size: int = -1) -> bytes:
        return self.read_buffer(size).to_pybytes()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.closed = True


def _mixed(
    batches: Iterator[pa.RecordBatch], buffer_rows: int, seed: tuple[int, int, Shard]
) -> Iterator[pa.RecordBatch]:
    """The rows of ``batches`` shuffled within blocks of at least ``buffer_rows`` rows."""
    import numpy as np
    import pyarrow as pa

    number, epoch, shard = seed
    rng = np.random.Generator(np.random.PCG64([number, epoch, shard.index, shard.world]))
    pending: list[pa.RecordBatch] = []
    held = 0

    def flush() -> Iterator[pa.RecordBatch]:
        block = pa.concat_batches(pending) if len(pending) > 1 else pending[0]
        # 32-bit indices gather about twice as fast as NumPy's 64-bit ones
        width = np.int32 if block.num_rows < 2**31 else np.int64
        yield block.take(pa.array(rng.permutation(block.num_rows).astype(width)))

    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        if held >= buffer_rows:
            yield from flush()
            pending, held = [], 0
    if held:
        yield from flush()


def rebatch(
    batches: Iterator[pa.RecordBatch], schema: pa.Schema, size: int, drop_last: bool
) -> Iterator[pa.RecordBatch]:
    """Record batches of exactly ``size`` rows; the last one short unless ``drop_last``."""
    import pyarrow as pa

    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        while batch.num_rows:
            if not pending and batch.num_rows >= size:  # no copy: a slice of what came
                yield batch.slice(0, size)
                batch = batch.slice(size)
                continue
            take = min(size - held, batch.num_rows)
            pending.append(batch.slice(0, take))
            held += take
            batch = batch.slice(take)
            if held == size:
                yield pa.concat_batches(pending)
                pending, held = [], 0
    if held and not drop_last:
        yield pa.concat_batches(pending)


def to_numpy(batch: pa.RecordBatch) -> dict[str, Any]:
    """A batch as a dict of column name to NumPy array."""
    return {
        name: column.to_numpy(zero_copy_only=False)
        for name, column in zip(batch.schema.names, batch.columns, strict=True)
    }


def parse_table(table: str, version: int | None) -> tuple[str, int | None]:
    """``"name@3"`` as ``("name", 3)``; ``version`` when the name has none."""
    name, sep, number = table.partition("@")
    if not sep:
        return name, version
    if not (number.isascii() and number.isdigit()):
        raise InvalidInput(f"{table[:80]!r}: the version after '@' must be a number")
    if version is not None and version != int(number):
        raise InvalidInput(f"{table[:80]!r} and version={version} disagree")
    return name, int(number)
