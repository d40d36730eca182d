"""Admission for blob uploads: a bounded number at once, on threads of their own.

An upload streams for as long as its client sends, and the blocking work (hashing,
encryption, file writes) runs on a worker thread meanwhile. On anyio's shared thread pool,
forty slow uploads would hold every thread that the synchronous routes (health, node
heartbeats) need. So each process admits at most ``server.max_concurrent_uploads`` uploads;
the next is refused at once with 429 and ``Retry-After`` instead of queueing, and admitted
uploads run on their own capacity limiter, never on the shared pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.from_thread
from starlette.requests import Request

from underlay.errors import RateLimited, Unavailable

RETRY_AFTER_S = 5
BODY_BUFFER_BYTES = 8 * 1024 * 1024
"""How much of an upload's body :func:`run_upload` reads ahead of its worker thread."""

T = TypeVar("T")


class UploadSlots:
    """At most ``limit`` uploads at once in this process (used from the event loop only)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._threads: anyio.CapacityLimiter | None = None

    @property
    def threads(self) -> anyio.CapacityLimiter:
        """The capacity limiter admitted uploads run their blocking work on."""
        if self._threads is None:  # created in the event loop that uses it
            self._threads = anyio.CapacityLimiter(self.limit)
        return self._threads

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[anyio.CapacityLimiter]:
        """One upload slot for the block; RateLimited (429) at once when all are taken."""
        if self.active >= self.limit:
            raise RateLimited(
                f"this server is receiving {self.limit} uploads already (setting "
                f"server.max_concurrent_uploads); retry in {RETRY_AFTER_S} s",
                retry_after=RETRY_AFTER_S,
            )
        self.active += 1  # no await between the check and here: no other task interleaves
        try:
            yield self.threads
        finally:
            self.active -= 1


BINARY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
"""``openapi_extra`` of a route whose body is a raw upload (read with :func:`body_chunks`)."""


def body_chunks(request: Request) -> Iterator[bytes]:
    """The request body, chunk by chunk, for blocking code on a worker thread: it streams in
    as it arrives, never whole in memory."""
    stream = request.stream()
    while True:
        try:
            chunk = anyio.from_thread.run(stream.__anext__)
        except StopAsyncIteration:
            return
        if chunk:
            yield chunk


async def run_upload(request: Request, work: Callable[[Iterator[bytes]], T]) -> T:
    """``work(body)`` on an upload slot's thread, ``body`` being the request body chunk by
    chunk (RateLimited at once when every slot is taken).

    The event loop reads the body ahead of the worker, up to ``BODY_BUFFER_BYTES``, while the
    worker hashes, encrypts and writes what came before, and the worker takes everything read
    so far in one trip to the event loop (:func:`body_chunks` makes one trip per piece of 64
    KiB or less, and stops reading while the worker works). An error reading the body (a
    disconnect, a body limit) is raised to ``work`` where the body stops."""
    slots: UploadSlots = request.app.state.uploads
    async with slots.hold() as threads:  # never the shared pool that health routes need
        pump = _BodyPump(request, BODY_BUFFER_BYTES)
        result: list[T] = []
        failure: list[Exception] = []
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(pump.run)
            try:
                result.append(
                    await anyio.to_thread.run_sync(lambda: work(pump.chunks()), limiter=threads)
                )
            except Exception as error:  # raised below, outside the group (not wrapped)
                failure.append(error)
            tasks.cancel_scope.cancel()  # a worker that failed early leaves the body unread
        if failure:
            raise failure[0]
        return result[0]


class _BodyPump:
    """A request body read on the event loop into a bounded list of pieces."""

    def __init__(self, request: Request, limit: int) -> None:
        self._request = request
        self._limit = limit
        self._pieces: list[bytes] = []
        self._held = 0
        self._ended = False
        self._error: Exception | None = None
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def run(self) -> None:
        complete = False
        try:
            async for chunk in self._request.stream():
                while self._held >= self._limit:  # the worker is behind: wait for it
                    await self._changed.wait()
                if chunk:
                    self._pieces.append(chunk)
                    self._held += len(chunk)
                    self._notify()
            complete = True
        except Exception as error:  # handed to the worker, where the body stops
            self._error = error
        finally:
            if not complete and self._error is None:  # cancelled: the worker must not wait
                self._error = Unavailable("the server stopped reading the upload; try again")
            self._ended = True
            self._notify()

    async def _take(self) -> list[bytes]:
        while not self._pieces and not self._ended:
            await self._changed.wait()
        pieces, self._pieces, self._held = self._pieces, [], 0
        self._notify()
        if not pieces and self._error is not None:
            raise self._error
        return pieces

    def chunks(self) -> Iterator[bytes]:
        """The body on the worker thread: every piece read so far, per trip to the loop."""
        while pieces := anyio.from_thread.run(self._take):
            yield from pieces
