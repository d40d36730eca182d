"""uvicorn's httptools protocol with the same guards as :class:`~underlay.api.server.
HardenedH11Protocol` (see :mod:`underlay.api.server`): a deadline for each request head, and
a bound on a head that is still incomplete. Imported only when httptools is installed."""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from underlay.api.server import head_too_large, refusal

log = logging.getLogger("underlay.server")


def _parse_error(message: str) -> str:
    if "Transfer-Encoding" in message and "Content-Length" in message:
        return "the request has both Content-Length and Transfer-Encoding; send one"
    return f"the request is not valid HTTP/1.1: {message}"


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """The parser awaits a head from the connection's start, and again once a request has
    been read whole; while it does and no response is being written, the head deadline runs
    and the bytes received are counted: past ``max_head_bytes`` with no complete head, the
    connection gets 431 and is closed. A head completed within the limit's reach goes on to
    the middleware, which measures it exactly (431 over the limit)."""

    header_timeout_s: ClassVar[float] = 10.0
    max_head_bytes: ClassVar[int] = 16 * 1024
    _head_timer: asyncio.TimerHandle | None = None
    _awaiting_head: bool = True
    _head_bytes: int = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._awaiting_head, self._head_bytes = True, 0
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the head bound, and malformed requests refused with a problem
        response as the middleware words it (uvicorn answers plain text)."""
        if self._awaiting_head:
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            self._refuse(refusal(400, _parse_error(str(exc))))
            return
        if self._awaiting_head and self._head_bytes > self.max_head_bytes:
            self._refuse(refusal(431, head_too_large(self.max_head_bytes)))

    def _refuse(self, response: bytes) -> None:
        if not self.transport.is_closing():
            self._stop_head_timer()
            self.transport.write(response)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head, self._head_bytes = True, 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _idle(self) -> bool:
        """Awaiting a head with no request of this connection still being answered."""
        cycle = self.cycle
        busy = (cycle is not None and not cycle.response_complete) or bool(self.pipeline)
        return self._awaiting_head and not busy and not self.transport.is_closing()

    def _watch_head(self) -> None:
        if self._idle() and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._idle():
            client = self.client[0] if self.client else ""
            log.info(
                "closed a connection that sent no complete request head in time",
                extra={"client": client, "timeout_s": self.header_timeout_s},
            )
            self.transport.close()
