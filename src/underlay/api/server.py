"""How ``underlay up`` runs uvicorn: the options that bound what one client can hold.

uvicorn's HTTP servers, left at their defaults, keep a connection that never sends a request
head open forever, believe ``X-Forwarded-For`` from 127.0.0.1, and bound the request head only
partly (h11 when it arrives in pieces, httptools not at all). :func:`uvicorn_options` turns
the ``server`` settings into uvicorn options and picks the protocol (``server.http``):
:class:`HardenedHttpToolsProtocol` (httptools, the C parser: about half the CPU of h11 per
request, ``docs/serving-performance.md``) when httptools is installed, else
:class:`HardenedH11Protocol`. Both close a connection that has not sent a complete request
head within ``server.header_read_timeout_s`` of opening (or of its previous response), so
slowloris clients cannot pile up, and both refuse a head that grows past
``server.max_header_bytes`` before it is complete (h11 with 400, httptools with 431), so a
client cannot make the server buffer an endless head. Limits on the request itself (header
count and size, body framing, body read timeout, upload slots) live in
:mod:`underlay.api.middleware`, the same for both.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from underlay.config import Settings

log = logging.getLogger("underlay.server")


class HardenedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head."""

    header_timeout_s: ClassVar[float] = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _watch_head(self) -> None:
        """Run the head deadline while the peer owes us a request head, and only then."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)
        elif not waiting:
            self._stop_head_timer()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            client = self.client[0] if self.client else ""
            log.info(
                "closed a connection that sent no complete request head in time",
                extra={"client": client, "timeout_s": self.header_timeout_s},
            )
            self.transport.close()


def _httptools_protocol() -> type[asyncio.Protocol]:
    """:class:`HardenedHttpToolsProtocol`, defined on first use: httptools is optional."""
    global _HTTPTOOLS
    if _HTTPTOOLS is None:
        from underlay.api.server_httptools import HardenedHttpToolsProtocol

        _HTTPTOOLS = HardenedHttpToolsProtocol
    return _HTTPTOOLS


_HTTPTOOLS: type[asyncio.Protocol] | None = None


def protocol(settings: Settings) -> type[asyncio.Protocol]:
    """The hardened protocol class ``server.http`` asks for (``auto``: httptools if
    installed)."""
    choice = settings.server.http
    if choice == "auto":
        choice = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return _httptools_protocol() if choice == "httptools" else HardenedH11Protocol


def configure(settings: Settings) -> None:
    """Apply the settings the protocols read; call in each server process before serving."""
    HardenedH11Protocol.header_timeout_s = settings.server.header_read_timeout_s
    if settings.server.http != "h11" and importlib.util.find_spec("httptools"):
        cls: Any = _httptools_protocol()
        cls.header_timeout_s = settings.server.header_read_timeout_s
        cls.max_head_bytes = settings.server.max_header_bytes


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn keyword arguments for the ``server`` settings (besides host, port and TLS)."""
    server = settings.server
    configure(settings)
    trusted = ",".join(server.trusted_proxies)
    return {
        "http": protocol(settings),
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or "",
        "timeout_keep_alive": server.keep_alive_timeout_s,
        "h11_max_incomplete_event_size": server.max_header_bytes,
    }


def head_too_large(max_head_bytes: int) -> str:
    """Why a head that grew past the limit is refused."""
    return f"the request head is over {max_head_bytes} bytes (setting server.max_header_bytes)"


_REASONS = {400: "Bad Request", 431: "Request Header Fields Too Large"}


def refusal(status: int, detail: str) -> bytes:
    """A problem response a protocol writes before closing the connection, for a request no
    app saw (so no request id)."""
    from underlay.api.problems import problem_body
    from underlay.errors import InvalidInput

    body = json.dumps(problem_body(status, InvalidInput, detail, "", None)).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "content-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body
