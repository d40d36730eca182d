"""The order in which pending work is considered.

- ``fifo``: by submit time (then id, so equal times are still deterministic).
- ``las``: least attained service first (Tiresias, NSDI '19). With ``service_levels`` the
  attained service is discretised into levels, and inside a level the order is FIFO, which
  keeps long jobs from being reordered on every small difference. It needs no duration.
- ``fair``: projects interleave by dominant resource share (see :class:`.quota.FairShare`);
  inside a project, higher priority class first, then lower service level, then FIFO.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator

from underlay.compute.scheduler.quota import FairShare
from underlay.compute.scheduler.snapshot import PolicyConfig, Workload

SortKey = tuple[float, ...]


def service_level(attained: float, levels: tuple[float, ...]) -> int:
    """The discretised LAS level: how many thresholds ``attained`` has reached."""
    return bisect_right(levels, attained)


def sort_key(config: PolicyConfig) -> Callable[[Workload], tuple[float, float, float, str]]:
    """The in-queue order of ``config`` (inside a project, for ``fair``)."""
    levels = config.service_levels

    def rank(w: Workload) -> float:
        return float(service_level(w.attained_service, levels)) if levels else w.attained_service

    if config.order == "fifo":
        return lambda w: (0.0, 0.0, w.submit_time, w.id)
    if config.order == "las":
        return lambda w: (0.0, rank(w), w.submit_time, w.id)
    return lambda w: (-float(w.priority), rank(w) if levels else 0.0, w.submit_time, w.id)


def in_order(
    config: PolicyConfig, workloads: list[Workload], fair: FairShare | None
) -> Iterator[Workload]:
    """Yield ``workloads`` in policy order.

    For ``fair`` the caller charges each placement to ``fair`` before asking for the next
    workload; the next project is then the one with the smallest dominant share.
    """
    key = sort_key(config)
    if config.order != "fair" or fair is None:
        yield from sorted(workloads, key=key)
        return
    queues: dict[str, deque[Workload]] = {}
    for w in sorted(workloads, key=key):
        queues.setdefault(w.project, deque()).append(w)
    heap = [(fair.share(p), p) for p in queues]
    heapq.heapify(heap)
    while heap:
        _, project = heapq.heappop(heap)
        queue = queues[project]
        yield queue.popleft()
        if queue:
            heapq.heappush(heap, (fair.share(project), project))
