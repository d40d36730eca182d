"""Dynamic batching: coalesce concurrent requests into one model call and split the result.

Each request carries one or more rows (axis 0 of every input). A collector task takes
requests in arrival order and forms a batch, then starts ``run_batch`` on it as its own task
and goes on collecting; at most ``max_concurrency`` batches run at once (one per replica
connection is the natural setting).

When a batch is sent (the rule):

- at once, with whatever is already queued, when *no* batch is running (or as soon as the
  last running one ends): an idle deployment adds no wait, so a lone client sees the bare
  model latency (the issue's p50 target);
- otherwise when it holds ``max_batch`` rows, or when its first request has waited
  ``max_wait_ms``, whichever comes first; then, if all ``max_concurrency`` slots are busy,
  it waits for a slot and tops up with requests that arrived meanwhile.

So batches grow exactly when the model is the bottleneck. A request is never split: one
larger than ``max_batch`` rows runs as a batch of its own. An exception from ``run_batch``
fails exactly the requests of that batch (each caller gets it); a caller that went away
(cancelled) is skipped. :meth:`Batcher.close` stops taking work and waits until every queued
and running request is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from underlay.errors import InvalidInput, Unavailable, UnderlayError

if TYPE_CHECKING:
    from underlay.serving.stats import DeploymentStats

Array = np.ndarray[Any, Any]
RunBatch = Callable[[dict[str, Array]], Awaitable[dict[str, Array]]]


@dataclass
class _Item:
    inputs: dict[str, Array]
    rows: int
    future: asyncio.Future[dict[str, Array]]
    enqueued: float


class Batcher:
    """Coalesce requests for one model version (see the module docstring for the rule)."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch: int,
        max_wait_ms: float,
        stats: DeploymentStats | None = None,
        max_concurrency: int = 4,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_concurrency < 1:
            raise InvalidInput(
                "max_batch and max_concurrency must be at least 1 and max_wait_ms not negative"
            )
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_concurrency = max_concurrency
        self._stats = stats
        self._queue: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._slot_free: asyncio.Event | None = None
        self._collector: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Batches being run."""
        return len(self._running)

    async def submit(self, inputs: dict[str, Array]) -> dict[str, Array]:
        """Run ``inputs`` (rows along axis 0) in some batch; that request's rows of the outputs."""
        if self._closed:
            raise Unavailable("the deployment is shutting down; retry on another server")
        rows = _rows(inputs)
        loop = asyncio.get_running_loop()
        if self._collector is None:
            self._wakeup, self._slot_free = asyncio.Event(), asyncio.Event()
            self._collector = loop.create_task(self._collect())
        item = _Item(inputs, rows, loop.create_future(), time.monotonic())
        self._queue.append(item)
        assert self._wakeup is not None
        self._wakeup.set()
        return await item.future

    async def close(self) -> None:
        """Stop taking requests; return when every queued and running one is answered."""
        self._closed = True
        if self._collector is None:
            return
        assert self._wakeup is not None
        self._wakeup.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._collector
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _collect(self) -> None:
        assert self._wakeup is not None and self._slot_free is not None
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [self._queue.popleft()]
            rows = batch[0].rows
            if self._running:
                rows = await self._fill_until(batch, rows, batch[0].enqueued + self.max_wait_s)
            while len(self._running) >= self.max_concurrency:
                self._slot_free.clear()
                await self._slot_free.wait()
            self._take_queued(batch, rows)
            self._start(batch)

    async def _fill_until(self, batch: list[_Item], rows: int, deadline: float) -> int:
        assert self._wakeup is not None
        while True:
            rows = self._take_queued(batch, rows)
            remaining = deadline - time.monotonic()
            if (
                rows >= self.max_batch
                or remaining <= 0
                or not self._running
                or self._closed
                or self._blocked(rows)
            ):
                return rows
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):  # no task per wait, unlike wait_for
                    await self._wakeup.wait()

    def _blocked(self, rows: int) -> bool:
        """Whether the next queued request would not fit the batch (so waiting is useless)."""
        return bool(self._queue) and rows + self._queue[0].rows > self.max_batch

    def _take_queued(self, batch: list[_Item], rows: int) -> int:
        queue = self._queue
        while queue and rows + queue[0].rows <= self.max_batch:
            item = queue.popleft()
            batch.append(item)
            rows += item.rows
        return rows

    def _start(self, batch: list[_Item]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        assert self._slot_free is not None and self._wakeup is not None
        self._slot_free.set()
        if not self._running:
            self._wakeup.set()  # a partial batch waiting for company goes now

    async def _run(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]
        if not live:
            return
        if self._stats is not None:
            self._stats.observe_batch(sum(item.rows for item in live))
        try:
            inputs = _concat([item.inputs for item in live])
            outputs = await self._run_batch(inputs)
            parts = _split(outputs, [item.rows for item in live])
        except BaseException as exc:  # every caller of this batch gets the error
            error = exc if isinstance(exc, Exception) else Unavailable("the batch was cancelled")
            for item in live:
                if not item.future.done():
                    item.future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for item, part in zip(live, parts, strict=True):
            if not item.future.done():
                item.future.set_result(part)


def _rows(inputs: dict[str, Array]) -> int:
    if not inputs:
        raise InvalidInput("a request needs at least one input")
    counts = {a.shape[0] if a.ndim else 0 for a in inputs.values()}
    if len(counts) != 1 or 0 in counts:
        raise InvalidInput("every input of a request must have the same, non-zero number of rows")
    return counts.pop()


def _concat(requests: list[dict[str, Array]]) -> dict[str, Array]:
    if len(requests) == 1:
        return requests[0]
    names = requests[0].keys()
    if any(r.keys() != names for r in requests):
        raise InvalidInput("requests in one batch must name the same inputs")
    return {name: np.concatenate([r[name] for r in requests]) for name in names}


def _split(outputs: dict[str, Array], sizes: list[int]) -> list[dict[str, Array]]:
    total = sum(sizes)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise UnderlayError(
                f"the model returned {array.shape[0] if array.ndim else 'a scalar'} rows of "
                f"output {name!r} for a batch of {total}"
            )
    if len(sizes) == 1:
        return [outputs]
    bounds = np.cumsum(sizes)[:-1].tolist()
    pieces = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: pieces[name][i] for name in outputs} for i in range(len(sizes))]
