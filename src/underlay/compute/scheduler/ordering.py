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
from collections.abc import Iterable, Iterator
from operator import attrgetter
from typing import TypeVar

from underlay.compute.scheduler.quota import FairShare
from underlay.compute.scheduler.snapshot import PolicyConfig, Workload

T = TypeVar("T")


def service_level(attained: float, levels: tuple[float, ...]) -> int:
    """The discretised LAS level: how many thresholds ``attained`` has reached."""
    return bisect_right(levels, attained)


def ordered(config: PolicyConfig, workloads: list[Workload]) -> list[Workload]:
    """``workloads`` in the in-queue order of ``config`` (inside a project, for ``fair``).

    Built from stable sorts on plain attributes, least significant key first, which is much
    cheaper than one sort on a computed tuple when the queue holds thousands of workloads.
    """
    out = sorted(workloads, key=attrgetter("submit_time", "id"))
    levels = config.service_levels
    if config.order != "fifo" and any(map(attrgetter("attained_service"), out)):
        if levels:
            out.sort(key=lambda w: bisect_right(levels, w.attained_service))
        elif config.order == "las":
            out.sort(key=attrgetter("attained_service"))
    if config.order == "fair":
        out.sort(key=attrgetter("priority"), reverse=True)  # stable, even reversed
    return out


def in_order(
    config: PolicyConfig,
    workloads: list[Workload],
    fair: FairShare | None,
    presorted: bool = False,
) -> Iterator[Workload]:
    """Yield ``workloads`` in policy order.

    For ``fair`` the caller charges each placement to ``fair`` before asking for the next
    workload; the next project is then the one with the smallest dominant share.
    ``presorted``: ``workloads`` are already in in-queue order (inside each project, for
    ``fair``), as a subsequence of what this yielded earlier in the round is.
    """
    queue_order = workloads if presorted else ordered(config, workloads)
    if config.order != "fair" or fair is None:
        yield from queue_order
        return
    queues = _project_queues(queue_order)
    heap = [(fair.share(p), p) for p in queues]
    heapq.heapify(heap)
    while heap:
        _, project = heapq.heappop(heap)
        queue = queues[project]
        # Pushing the project back and popping the smallest would give it again while it
        # stays below every other project (names are unique, so there are no ties): keep
        # serving it without touching the heap. Its share moves only when the caller charges
        # a placement; a workload that waits, the common case in a deep queue, changes nothing.
        while queue:
            charges = fair.charges
            yield queue.popleft()
            if not queue:
                break
            if fair.charges == charges:
                continue
            entry = (fair.share(project), project)
            if heap and heap[0] < entry:
                heapq.heappush(heap, entry)
                break


def fair_runs(
    config: PolicyConfig, workloads: list[Workload], fair: FairShare, presorted: bool = False
) -> Iterator[deque[Workload]]:
    """:func:`in_order` for ``fair``, a project at a time: yields the queue of the project to
    serve, and the caller takes workloads from its front until it charges a placement to
    ``fair`` (or the queue is empty) before asking for the next. The same order as
    :func:`in_order`, without resuming a generator for every workload."""
    queue_order = workloads if presorted else ordered(config, workloads)
    yield from serve_projects(_project_queues(queue_order), fair)


def serve_projects(queues: dict[str, deque[T]], fair: FairShare) -> Iterator[deque[T]]:
    """:func:`fair_runs` over queues already split by project (each in queue order), which
    a caller that builds them as it goes (the round's borrowers) hands in directly. Which
    project comes next depends only on the shares (project names break ties), not on the
    order of ``queues``."""
    heap = [(fair.share(p), p) for p in queues]
    heapq.heapify(heap)
    while heap:
        _, project = heapq.heappop(heap)
        queue = queues[project]
        while queue:
            yield queue
            if not queue:
                break
            entry = (fair.share(project), project)
            if heap and heap[0] < entry:
                heapq.heappush(heap, entry)
                break


def _project_queues(queue_order: Iterable[Workload]) -> dict[str, deque[Workload]]:
    """Each project's workloads in queue order."""
    queues: dict[str, deque[Workload]] = {}
    for w in queue_order:
        queue = queues.get(w.project)
        if queue is None:
            queue = queues[w.project] = deque()
        queue.append(w)
    return queues
