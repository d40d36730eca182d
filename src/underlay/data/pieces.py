"""Pieces of a table version, for loaders: the row groups of its Parquet files, put in an order
decided by a seed and dealt out among the shards of a training job.

A loader streams one shard of one epoch with one request (``GET …/data?seed=7&epoch=2&
shard=1/4``): the server lists the version's pieces, orders them, keeps every ``world``-th
one starting at ``shard`` and streams those row groups as Arrow IPC, Parquet decoded by
pyarrow with no per-row Python work. The query string stays a few dozen characters however
many pieces there are, and the shards of one epoch together hold every piece exactly once.

The order is a pure function of the piece and the seed: pieces are sorted by the SHA-256 of
``seed:epoch:file:row group``, so the same seed and epoch give the same order on any machine
and any Python or library version, and another epoch gives another order. Without a seed the
pieces keep the table's own order (file by file, row group by row group). Mixing rows across
pieces is the client's work, within a bounded buffer (see underlay.client.loader).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from underlay.data.schemas import PieceRead, TablePiecesRead
from underlay.errors import InvalidInput

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pads


@dataclass(frozen=True)
class Piece:
    """One row group of one Parquet file of a table version."""

    file: int  # the file's place among the version's files
    path: str
    row_group: int
    rows: int


_SHARD = re.compile(r"([0-9]{1,9})/([0-9]{1,9})")


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
    import pyarrow as pa

    try:
        scanner = dataset.scanner(columns=columns, batch_size=batch_rows)
    except (pa.ArrowInvalid, KeyError) as error:
        raise InvalidInput(f"cannot read those columns: {error}") from None
    return scanner.projected_schema, scanner.to_batches()


def scan(
    dataset: pads.Dataset,
    pieces: Sequence[Piece],
    columns: list[str] | None,
    batch_rows: int,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The rows of ``pieces``, in their order, as record batches of at most ``batch_rows``."""
    import pyarrow.dataset as pads

    schema, _ = scan_all(dataset, columns, batch_rows)
    if not pieces:
        return schema, iter(())
    fragments = list(dataset.get_fragments())
    chosen = [fragments[p.file].subset(row_group_ids=[p.row_group]) for p in pieces]
    first = fragments[0]
    subset = pads.FileSystemDataset(chosen, dataset.schema, first.format, first.filesystem)
    return schema, subset.scanner(columns=columns, batch_size=batch_rows).to_batches()
