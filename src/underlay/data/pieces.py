"""Pieces of a table version, for loaders: the row groups of its Parquet files, put in an order
decided by a seed and dealt out among the shards of a training job.

A loader streams one shard of one epoch with one request (``GET …/pieces/raw?seed=7&
epoch=2&shard=1/4``): the server lists the version's pieces, orders them, keeps every
``world``-th one starting at ``shard`` and sends those row groups' column chunks as the bytes
they are in the files, for the loader to decode (see :func:`raw`); ``GET …/data`` with the
same parameters streams the same rows decoded here, as Arrow IPC. The query string stays a
few dozen characters however many pieces there are, and the shards of one epoch together
hold every piece exactly once.

The order is a pure function of the piece and the seed: pieces are sorted by the SHA-256 of
``seed:epoch:file:row group``, so the same seed and epoch give the same order on any machine
and any Python or library version, and another epoch gives another order. Without a seed the
pieces keep the table's own order (file by file, row group by row group). Mixing rows across
pieces is the client's work, within a bounded buffer (see underlay.client.loader).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from underlay.data.schemas import PieceRead, TablePiecesRead
from underlay.errors import InvalidInput

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq


@dataclass(frozen=True)
class Piece:
    """One row group of one Parquet file of a table version."""

    file: int  # the file's place among the version's files
    path: str
    row_group: int
    rows: int


_SHARD = re.compile(r"([0-9]{1,9})/([0-9]{1,9})")
_PIECES = re.compile(r"[0-9]{1,9}:[0-9]{1,9}(,[0-9]{1,9}:[0-9]{1,9})*")
MAX_NAMED = 256  # pieces one request may name (``pieces=FILE:GROUP,…``)


def parse_named(text: str) -> list[tuple[int, int]]:
    """``"0:0,3:1"``: row group 0 of file 0, row group 1 of file 3 (files numbered as the
    version lists them, see :func:`describe`)."""
    if not _PIECES.fullmatch(text):
        raise InvalidInput(f"pieces {text[:40]!r} must be FILE:GROUP,FILE:GROUP…, e.g. 0:0,3:1")
    named = [(int(f), int(g)) for f, g in (item.split(":") for item in text.split(","))]
    if len(named) > MAX_NAMED:
        raise InvalidInput(f"a request names at most {MAX_NAMED} pieces, not {len(named)}")
    return named


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``world`` (0 <= index < world)."""

    index: int = 0
    world: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"1/4"``: shard 1 of 4."""
        found = _SHARD.fullmatch(text)
        if found is None:
            raise InvalidInput(f"shard {text[:40]!r} must be INDEX/WORLD, e.g. 1/4")
        shard = cls(int(found[1]), int(found[2]))
        if not 0 <= shard.index < shard.world:
            raise InvalidInput(
                f"shard {text!r}: the index must be at least 0 and below {shard.world}"
            )
        return shard


def list_pieces(dataset: pads.Dataset) -> list[Piece]:
    """Every row group of the version's files, in the table's order (reads the footers)."""
    pieces: list[Piece] = []
    for number, fragment in enumerate(dataset.get_fragments()):
        for group in fragment.row_groups:
            pieces.append(Piece(number, fragment.path, group.id, group.num_rows))
    return pieces


def order(pieces: Sequence[Piece], seed: int | None, epoch: int = 0) -> list[Piece]:
    """The pieces in the order of ``seed`` and ``epoch``; the table's order without a seed."""
    if seed is None:
        return list(pieces)

    def key(piece: Piece) -> bytes:
        return hashlib.sha256(f"{seed}:{epoch}:{piece.path}:{piece.row_group}".encode()).digest()

    return sorted(pieces, key=key)


def plan(pieces: Sequence[Piece], seed: int | None, epoch: int, shard: Shard) -> list[Piece]:
    """The pieces shard ``shard`` streams in epoch ``epoch``, in order."""
    return order(pieces, seed, epoch)[shard.index :: shard.world]


def read(
    dataset: pads.Dataset,
    columns: list[str] | None,
    batch_rows: int,
    seed: int | None = None,
    epoch: int = 0,
    shard: Shard | None = None,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The rows shard ``shard`` reads in epoch ``epoch`` of ``seed`` (every row, in the
    table's order, without seed and shard)."""
    if seed is None and (shard is None or shard.world == 1):
        return scan_all(dataset, columns, batch_rows)
    chosen = plan(list_pieces(dataset), seed, epoch, shard or Shard())
    return scan(dataset, chosen, columns, batch_rows)


def describe(table: str, version: int, dataset: pads.Dataset) -> TablePiecesRead:
    """The version's pieces, for ``GET …/tables/{name}/pieces``."""
    found = list_pieces(dataset)
    return TablePiecesRead(
        table=table,
        version=version,
        rows=sum(p.rows for p in found),
        files=len({p.file for p in found}),
        pieces=[PieceRead(file=p.file, row_group=p.row_group, rows=p.rows) for p in found],
    )


def scan_all(
    dataset: pads.Dataset, columns: list[str] | None, batch_rows: int
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Every row of the version, in the table's order."""
    scanner = _scanner(dataset, columns, batch_rows)
    return scanner.projected_schema, scanner.to_batches()


def projected(dataset: pads.Dataset, columns: list[str] | None) -> pa.Schema:
    """The schema of ``columns`` of the version (all of them by default); nothing is read."""
    schema: pa.Schema = _scanner(dataset, columns, 1).projected_schema
    return schema


def _scanner(dataset: pads.Dataset, columns: list[str] | None, batch_rows: int) -> pads.Scanner:
    import pyarrow as pa

    try:
        return dataset.scanner(columns=columns, batch_size=batch_rows)
    except (pa.ArrowInvalid, KeyError) as error:
        raise InvalidInput(f"cannot read those columns: {error}") from None


def scan(
    dataset: pads.Dataset,
    pieces: Sequence[Piece],
    columns: list[str] | None,
    batch_rows: int,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The rows of ``pieces``, in their order, as record batches of at most ``batch_rows``."""
    import pyarrow.dataset as pads

    schema = projected(dataset, columns)
    if not pieces:
        return schema, iter(())
    fragments = list(dataset.get_fragments())
    chosen = [fragments[p.file].subset(row_group_ids=[p.row_group]) for p in pieces]
    first = fragments[0]
    subset = pads.FileSystemDataset(chosen, dataset.schema, first.format, first.filesystem)
    return schema, subset.scanner(columns=columns, batch_size=batch_rows).to_batches()


# -- the pieces as their Parquet bytes (``GET …/tables/{name}/pieces/raw``) -------------------
#
# A loader decodes the row groups itself: the server sends each chosen row group's column
# chunks as they lie in the file, and the file's footer once, before its first piece, so the
# server neither decodes nor re-encodes anything. The stream is a run of frames, each a
# ``FRAME`` header (kind, file, payload length, argument) and then the payload:
#
# - ``SCHEMA``: the Arrow schema of the columns read (an IPC message); first, exactly once;
# - ``FOOTER``: the file's tail, its footer and last 8 bytes (argument: the file's size);
# - ``RANGE``: bytes of the file from offset ``argument`` (column chunks of the next piece);
# - ``PIECE``: row group ``argument`` of the file is complete: decode it (no payload);
# - ``ARROW``: a piece the server decoded itself (an Arrow IPC stream): when its file lacks a
#   column of the table (a column added later, whose rows the table reads as nulls);
# - ``END``: the last frame, so that a stream cut short is told from a complete one.

FRAME = struct.Struct("<BIQQ")
SCHEMA, FOOTER, RANGE, PIECE, ARROW, END = range(1, 7)
RAW_READ = 1 << 20  # bytes read from a file at a time
# Chunks this close are sent with the bytes between: Arrow's reader coalesces reads across
# holes of up to 8 KiB (CacheOptions.hole_size_limit), and asks for those bytes too
HOLE = 64 << 10


def raw(
    dataset: pads.Dataset,
    location: str,
    columns: list[str] | None,
    seed: int | None = None,
    epoch: int = 0,
    shard: Shard | None = None,
    named: list[tuple[int, int]] | None = None,
) -> Iterator[bytes | memoryview]:
    """The frames of the pieces shard ``shard`` reads in epoch ``epoch`` of ``seed`` (every
    row group in the table's order without them), or of the ``named`` pieces (file, row
    group), in that order; ``location`` is the table's folder or URL. Bad ``columns`` or
    pieces raise before any frame."""
    schema = projected(dataset, columns)
    if named is not None:
        chosen = _named(dataset, named)
    else:
        chosen = plan(list_pieces(dataset), seed, epoch, shard or Shard())
    return _raw_frames(dataset, location, schema, chosen)


def _named(dataset: pads.Dataset, named: list[tuple[int, int]]) -> list[Piece]:
    """The pieces ``named``, checked against the version; only their files' footers are
    read (a read task of a version of many files names its own few)."""
    fragments = list(dataset.get_fragments())
    chosen: list[Piece] = []
    for number, group in named:
        if number >= len(fragments):
            raise InvalidInput(f"piece {number}:{group}: the version has {len(fragments)} files")
        fragment = fragments[number]
        if group >= fragment.metadata.num_row_groups:
            raise InvalidInput(
                f"piece {number}:{group}: file {number} has "
                f"{fragment.metadata.num_row_groups} row groups"
            )
        chosen.append(
            Piece(number, fragment.path, group, fragment.metadata.row_group(group).num_rows)
        )
    return chosen


def _opener(location: str) -> Callable[[pads.ParquetFileFragment], pa.NativeFile]:
    """How to open a file of the version: a local one as Arrow's own file (its reads land in
    Arrow's memory pool, reused from read to read, at a fraction of the cost of delta-rs's
    file system), a remote one through the dataset's file system."""
    import pyarrow as pa

    if "://" not in location or location.startswith("file://"):
        root = location.removeprefix("file://")
        return lambda fragment: pa.OSFile(f"{root}/{fragment.path}")
    return lambda fragment: fragment.filesystem.open_input_file(fragment.path)


def _raw_frames(
    dataset: pads.Dataset, location: str, schema: pa.Schema, chosen: list[Piece]
) -> Iterator[bytes | memoryview]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    head = schema.serialize()
    yield FRAME.pack(SCHEMA, 0, head.size, 0)
    yield memoryview(head)
    fragments = list(dataset.get_fragments())
    open_file = _opener(location)
    # Reads land in two buffers of Arrow's pool taken in turn: the server copies each chunk
    # into its HTTP framing before it asks for the next, and fresh memory for every read can
    # cost more than the read itself (page faults)
    buffers = [memoryview(pa.allocate_buffer(RAW_READ)).cast("B") for _ in range(2)]
    opened: dict[int, tuple[pa.NativeFile, pq.FileMetaData, bool]] = {}
    try:
        for piece in chosen:
            if piece.file not in opened:
                fragment = fragments[piece.file]
                source = open_file(fragment)
                size = source.size()
                tail = _tail(source, size)
                meta = pq.read_metadata(pa.BufferReader(tail), memory_map=False)
                names = set(meta.schema.to_arrow_schema().names)
                whole = all(name in names for name in schema.names)
                opened[piece.file] = (source, meta, whole)
                if whole:
                    yield FRAME.pack(FOOTER, piece.file, tail.size, size)
                    yield memoryview(tail)
            source, meta, whole = opened[piece.file]
            if not whole:
                yield from _decoded(dataset, schema, piece)
                continue
            for start, end in chunk_ranges(meta, piece.row_group, schema.names):
                yield FRAME.pack(RANGE, piece.file, end - start, start)
                for at in range(start, end, RAW_READ):
                    yield _read_into(source, at, buffers[(at // RAW_READ) % 2][: end - at])
            yield FRAME.pack(PIECE, piece.file, 0, piece.row_group)
        yield FRAME.pack(END, 0, 0, 0)
    finally:
        for source, _, _ in opened.values():
            source.close()


def _read_into(source: pa.NativeFile, at: int, into: memoryview) -> memoryview:
    from underlay.errors import IntegrityFailure

    source.seek(at)
    done = source.readinto(into)
    if done != len(into):
        raise IntegrityFailure("a file of the table is shorter than its footer says")
    return into


def _tail(source: pa.NativeFile, size: int) -> pa.Buffer:
    """A Parquet file's footer and the 8 bytes after it."""
    from underlay.errors import IntegrityFailure

    last = bytes(source.read_at(8, size - 8)) if size >= 12 else b""
    if len(last) != 8 or last[4:] != b"PAR1":
        raise IntegrityFailure("a file of the table is not Parquet")
    length = int.from_bytes(last[:4], "little")
    if length + 12 > size:
        raise IntegrityFailure("a file of the table has a broken footer")
    import pyarrow as pa

    return pa.py_buffer(source.read_at(length + 8, size - length - 8))


def chunk_ranges(meta: pq.FileMetaData, row_group: int, names: list[str]) -> list[tuple[int, int]]:
    """The byte ranges [start, end) of the column chunks of ``names`` in ``row_group`` (those
    a Parquet reader reads), in file order, merged where at most ``HOLE`` bytes lie between."""
    wanted = set(names)
    group = meta.row_group(row_group)
    spans: list[tuple[int, int]] = []
    for i in range(group.num_columns):
        chunk = group.column(i)
        if chunk.path_in_schema.split(".", 1)[0] not in wanted:
            continue
        start = chunk.data_page_offset
        dictionary = chunk.dictionary_page_offset
        if chunk.has_dictionary_page and dictionary and 0 < dictionary < start:
            start = dictionary
        spans.append((start, start + chunk.total_compressed_size))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1] + HOLE:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _decoded(
    dataset: pads.Dataset, schema: pa.Schema, piece: Piece
) -> Iterator[bytes | memoryview]:
    """``piece`` decoded here, as an ``ARROW`` frame."""
    import pyarrow as pa

    _, batches = scan(dataset, [piece], schema.names, 1 << 20)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    body = sink.getvalue()
    yield FRAME.pack(ARROW, piece.file, body.size, piece.row_group)
    yield memoryview(body)
