"""A fragmentation measure in the spirit of FGD (Weng et al., "Beware of Fragmentation", ATC '23).

FGD scores a node by the *expected* amount of its free GPU capacity that a workload drawn from
the cluster's typical mix could not use, and places each task where that expectation grows
least. Here, for a worker shape ``m`` (GPUs or a fraction, CPUs, memory) and one node:

- if the node lacks the CPUs or memory ``m`` needs, all its free GPU capacity is fragmented
  for ``m`` (the GPUs are stranded by the host, the main loss on the Alibaba trace);
- for a whole-GPU shape asking ``g``, every partly used GPU is fragmented, and the ``k`` whole
  free GPUs are too if ``k < g``;
- for a fractional shape asking ``f`` thousandths, a GPU with ``0 < free < f`` is fragmented.

The node's fragmentation is the sum over the mix weighted by each shape's frequency.
:class:`FragModel` keeps the most frequent shapes only (:data:`MAX_SHAPES`) and memoises the
measure per node state, so scoring a candidate is a dictionary look-up once a round has seen
that state. ``full_term``/``part_term`` are the GPU-only parts, used to order the index
buckets before any node is scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from underlay.compute.scheduler.snapshot import WHOLE, Request

MAX_SHAPES = 32
"""Shapes kept in the mix: the rest are rare, and every kept shape costs time per score."""

MixShape = tuple[int, int, int, int]
"""(whole GPUs, thousandths of one GPU, CPU thousandths, memory MiB) of one worker."""

NodeState = tuple[int, tuple[int, ...], int, int]
"""(whole free GPUs, sorted free shares of partly used GPUs, free CPU, free memory)."""


class FragModel:
    """Expected fragmentation of a node's free accelerators for a mix of worker shapes."""

    def __init__(self, mix: dict[MixShape, int]) -> None:
        top = sorted(mix.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_SHAPES]
        total = sum(count for _, count in top)
        self.shapes: list[tuple[int, int, int, int, float]] = [
            (g, m, c, mem, count / total) for (g, m, c, mem), count in top
        ]
        self._p_whole = sum(p for g, _, _, _, p in self.shapes if g)
        self._full_memo: dict[int, float] = {}
        self._part_memo: dict[int, float] = {0: 0.0}
        self._node_memo: dict[NodeState, float] = {}
        self.orders: dict[tuple[object, ...], list[int]] = {}
        """Memo of index bucket orders, for :mod:`.packing`."""
        self.deltas: dict[tuple[object, ...], float] = {}
        """Memo of placement deltas by (node state, request, share used), for :mod:`.packing`."""

    @classmethod
    def of(cls, requests: Iterable[tuple[Request, int]]) -> FragModel | None:
        """The model for the accelerator requests among (request, count) pairs (None if there
        are none)."""
        mix: dict[MixShape, int] = {}
        for r, count in requests:
            if (r.gpus or r.gpu_milli) and count > 0:
                key = (r.gpus, 0 if r.gpus else r.gpu_milli, r.cpu_milli, r.memory_mib)
                mix[key] = mix.get(key, 0) + count
        return cls(mix) if mix else None

    @classmethod
    def of_shapes(cls, counts: Mapping[tuple[int, int, int, int], int]) -> FragModel | None:
        """:meth:`of` for requests already counted by (gpus, gpu_milli, cpu_milli,
        memory_mib), as a round counts its pending and running work (in C, by
        ``collections.Counter``)."""
        mix: dict[MixShape, int] = {}
        for (gpus, milli, cpu, mem), count in counts.items():
            if (gpus or milli) and count > 0:
                key = (gpus, 0 if gpus else milli, cpu, mem)
                mix[key] = mix.get(key, 0) + count
        return cls(mix) if mix else None

    def full_term(self, k: int) -> float:
        """GPU-only: expected fragmented thousandths among ``k`` whole free GPUs."""
        value = self._full_memo.get(k)
        if value is None:
            value = sum(p for g, _, _, _, p in self.shapes if g > k) * k * WHOLE
            self._full_memo[k] = value
        return value

    def part_term(self, free: int) -> float:
        """GPU-only: expected fragmented thousandths of one partly used GPU."""
        value = self._part_memo.get(free)
        if value is None:
            p = self._p_whole + sum(q for g, m, _, _, q in self.shapes if not g and free < m)
            value = p * free if 0 < free < WHOLE else 0.0
            self._part_memo[free] = value
        return value

    def node(self, state: NodeState) -> float:
        """Expected fragmented thousandths of one node in ``state``."""
        value = self._node_memo.get(state)
        if value is not None:
            return value
        k, partial, cpu, mem = state
        shared = sum(partial)
        total = k * WHOLE + shared
        value = 0.0
        for g, m, c, mm, p in self.shapes:
            if cpu < c or mem < mm:
                value += p * total
            elif g:
                value += p * (shared + (k * WHOLE if k < g else 0))
            else:
                value += p * sum(s for s in partial if s < m)
        self._node_memo[state] = value
        return value
