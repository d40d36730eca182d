"""Keep-alive HTTP/1.1 connections from the data plane to its replicas.

The replicas are our own servers on 127.0.0.1, answering ``POST /predict`` with a
``Content-Length`` body, so a general HTTP client buys nothing here and costs a lot per call
(httpx spends more time than the model). This pool writes each request in one ``write``
(headers and body together, ``TCP_NODELAY`` set: no Nagle delay), reads the status line,
headers and exactly ``Content-Length`` bytes, and keeps the connection for the next call.

A connection that fails before any byte of its answer arrived after sitting idle (the replica
closed it meanwhile) is retried once on a fresh connection to the same replica; any other
failure raises :class:`ReplicaGone`, which the data plane treats as a replica that did not
answer (marked down, the batch retried once on another replica).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque

MAX_HEAD = 64 * 1024
MAX_BODY = 512 * 1024 * 1024


class ReplicaGone(Exception):
    """The replica refused, reset or closed the connection, or answered garbage."""


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ReplicaPool:
    """Idle connections per ``host:port``; one request per connection at a time."""

    def __init__(self, *, connect_timeout_s: float = 2.0, read_timeout_s: float = 60.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._idle: dict[tuple[str, int], deque[Connection]] = {}

    async def post(
        self, host: str, port: int, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """``POST path`` to ``host:port``: the status and the body of the answer."""
        head = [f"POST {path} HTTP/1.1", f"host: {host}:{port}", f"content-length: {len(body)}"]
        head.extend(f"{k}: {v}" for k, v in headers.items())
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        idle = self._idle.setdefault((host, port), deque())
        while idle:
            conn = idle.pop()
            try:
                return await self._exchange(conn, request, idle)
            except _Stale:
                continue  # closed while idle: try another or a fresh one
        conn = await self._connect(host, port)
        try:
            return await self._exchange(conn, request, idle)
        except _Stale as exc:
            raise ReplicaGone(str(exc)) from None

    async def _connect(self, host: str, port: int) -> Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=MAX_HEAD), self.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise ReplicaGone(f"cannot connect to {host}:{port}: {exc}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def _exchange(
        self, conn: Connection, request: bytes, idle: deque[Connection]
    ) -> tuple[int, bytes]:
        reader, writer = conn
        started = False
        try:
            writer.write(request)
            # one deadline for the whole answer, without wait_for's task per read
            async with asyncio.timeout(self.read_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
                started = True
                status, length, close = _parse_head(head)
                body = await reader.readexactly(length)
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            writer.close()
            if not started:
                raise _Stale(str(exc)) from None
            raise ReplicaGone(f"the replica broke off its answer: {exc}") from None
        except (TimeoutError, ValueError) as exc:
            writer.close()
            raise ReplicaGone(f"no valid answer from the replica: {exc}") from None
        if close:
            writer.close()
        else:
            idle.append(conn)
        return status, body

    async def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                _, writer = idle.pop()
                writer.close()
        self._idle.clear()


class _Stale(Exception):
    """The connection failed before any byte of an answer: the request was not served."""


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    status = int(parts[1])
    length, close = -1, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        if key == "content-length":
            length = int(value.strip())
        elif key == "connection" and value.strip().lower() == "close":
            close = True
    if not 0 <= length <= MAX_BODY:
        raise ValueError("the answer has no valid content-length")
    return status, length, close
