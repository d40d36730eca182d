"""The PyTorch face of a loader; imported only by ``TableLoader.torch()``, since torch is
heavy and optional (``pip install 'underlay[torch]'``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from underlay.client.loader import to_numpy
from underlay.data.pieces import Shard

if TYPE_CHECKING:
    import pyarrow as pa

    from underlay.client.loader import TableLoader


class TableDataset(IterableDataset[dict[str, Any]]):
    """Batches of a table as dicts of column name to tensor (text columns stay lists).

    Shards itself: each ``DataLoader`` worker of each rank reads shard
    ``rank * workers + worker`` of ``world * workers``, the rank and world being the loader's
    ``shard``, else those of ``torch.distributed`` when it is initialised."""

    def __init__(self, loader: TableLoader) -> None:
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration follows (before the DataLoader's iter)."""
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = self._rank()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shard = Shard(rank * workers + worker, world * workers)
        with self.loader.iterate(shard, _tensors) as batches:
            yield from batches

    def _rank(self) -> tuple[int, int]:
        if self.loader.shard is not None:
            return self.loader.shard
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1


def _tensors(batch: pa.RecordBatch) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, array in to_numpy(batch).items():
        if array.dtype.kind in "biuf":
            if not array.flags.writeable:
                array = array.copy()  # torch wants memory it may write to
            out[name] = torch.from_numpy(array)
        else:
            out[name] = array.tolist()
    return out
