"""How ``underlay up`` runs uvicorn: the options that bound what one client can hold.

uvicorn's h11 server, left at its defaults, keeps a connection that never sends a request
head open forever, believes ``X-Forwarded-For`` from 127.0.0.1, and bounds the request head
only when it arrives in pieces. :func:`uvicorn_options` turns the ``server`` settings into
uvicorn options, and :class:`HardenedH11Protocol` closes a connection that has not sent a
complete request head within ``server.header_read_timeout_s`` of opening (or of its previous
response), so slowloris clients cannot pile up. Limits on the request itself (header count and
size, body framing, body read timeout, upload slots) live in :mod:`underlay.api.middleware`.
"""

from __future__ import annotations

import asyncio
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


def configure(settings: Settings) -> None:
    """Apply the settings the protocol reads; call in each server process before serving."""
    HardenedH11Protocol.header_timeout_s = settings.server.header_read_timeout_s


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn keyword arguments for the ``server`` settings (besides host, port and TLS)."""
    server = settings.server
    configure(settings)
    trusted = ",".join(server.trusted_proxies)
    return {
        "http": HardenedH11Protocol,
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or "",
        "timeout_keep_alive": server.keep_alive_timeout_s,
        "h11_max_incomplete_event_size": server.max_header_bytes,
    }
