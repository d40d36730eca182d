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
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.from_thread
from starlette.requests import Request

from underlay.errors import RateLimited

RETRY_AFTER_S = 5


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
