"""When the SDK sends a request again: bounded retries with exponential backoff and jitter,
only where sending it again cannot do a thing twice.

A call is retried within one budget of time (``retry_budget_s``: 30 s by default,
``UNDERLAY_RETRY_BUDGET_S`` for :meth:`underlay.client.Client.from_env`; 0 turns retries off):

* **Nothing reached the server** (the connection was refused or could not be opened: a server
  stopped or restarting): every request is sent again, POSTs included.
* **The answer was lost** (the connection reset or closed after the request went out, a read
  timeout) or it was a 502, 503 or 504: only *idempotent* requests are sent again — GET, HEAD,
  PUT, DELETE, and the POSTs the server deduplicates, which their call sites mark (a tracking
  batch carries its own id; ending a run again with its status is a no-op). Any other POST may
  have been acted on, so it is not repeated: the caller gets ``Unavailable`` saying so.
* **A 429 with Retry-After**, for idempotent requests: after the time it names, if that fits
  in what is left of the budget.

A 503 that reports stored data failing verification (``IntegrityFailure``) is never retried,
nor is a request whose body was a stream already read in part. Waits grow from
:attr:`RetryPolicy.base_s` twice per attempt up to :attr:`RetryPolicy.max_delay_s`, each one
drawn between half and all of that ("equal jitter"), so clients cut off together by a restart
do not all come back in the same instant.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from underlay.errors import InvalidInput

BUDGET_ENV = "UNDERLAY_RETRY_BUDGET_S"
DEFAULT_BUDGET_S = 30.0
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUS = frozenset({502, 503, 504})
_INTEGRITY = "integrity-failure"


def budget_from_env(default: float, environ: Mapping[str, str] | None = None) -> float:
    """``UNDERLAY_RETRY_BUDGET_S`` as seconds, else ``default``; a bad value is InvalidInput."""
    raw = (os.environ if environ is None else environ).get(BUDGET_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86_400:
        raise InvalidInput(f"{BUDGET_ENV} must be a number of seconds from 0 to 86400, got {raw!r}")
    return value


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a call may be sent again (see the module docstring)."""

    budget_s: float = DEFAULT_BUDGET_S
    base_s: float = 0.1
    max_delay_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.budget_s <= 86_400:
            raise InvalidInput(f"retry_budget_s must be 0 to 86400 seconds, got {self.budget_s}")

    def start(self, method: str, idempotent: bool | None) -> Attempts:
        safe = method.upper() in IDEMPOTENT_METHODS if idempotent is None else idempotent
        return Attempts(self, safe)


class Attempts:
    """The retry state of one call: when it gives up, and how long to wait before the next try.

    Each ``after_*`` method returns the seconds to wait before sending again, or None when the
    call must not be retried (not safe, not replayable, or out of budget)."""

    def __init__(self, policy: RetryPolicy, safe: bool) -> None:
        self.policy = policy
        self.safe = safe
        self.deadline = time.monotonic() + policy.budget_s
        self._delay = policy.base_s

    def after_error(self, error: httpx.TransportError, replayable: bool) -> float | None:
        if not replayable:
            return None
        if not (self.safe or nothing_sent(error)):
            return None
        return self._next()

    def after_response(self, response: httpx.Response, replayable: bool) -> float | None:
        status = response.status_code
        if not (self.safe and replayable):
            return None
        retry_after = _retry_after(response)
        if status == 429:
            return None if retry_after is None else self._next(at_least=retry_after)
        if status not in RETRY_STATUS or _problem_slug(response) == _INTEGRITY:
            return None
        return self._next(at_least=retry_after or 0.0)

    def _next(self, at_least: float = 0.0) -> float | None:
        delay = self._delay / 2 + random.uniform(0, self._delay / 2)
        self._delay = min(self._delay * 2, self.policy.max_delay_s)
        wait = max(delay, at_least)
        if time.monotonic() + wait > self.deadline:
            return None
        return wait


def nothing_sent(error: httpx.TransportError) -> bool:
    """Whether ``error`` happened before any byte of the request left: the connection was
    refused or could not be opened in time."""
    return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)


class OnceBody:
    """A request body that can be read once (a generator, an open pipe), remembering whether
    reading began: once it has, the request cannot be sent again."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.started = False

    def __iter__(self) -> Iterator[bytes]:
        self.started = True
        return self._chunks


class FileBody:
    """A request body read from a seekable file from ``start``; each iteration reads it from
    there again, so the request can be sent again."""

    def __init__(self, reader: Any, chunk_size: int) -> None:
        self._reader = reader
        self._start = reader.tell()
        self._chunk_size = chunk_size

    def __iter__(self) -> Iterator[bytes]:
        self._reader.seek(self._start)
        return iter(lambda: self._reader.read(self._chunk_size), b"")


def replayable_content(content: Any) -> tuple[Any, OnceBody | None]:
    """``content`` as a request can send it again if need be, and the :class:`OnceBody` to
    ask whether it still can (None when it always can)."""
    if content is None or isinstance(content, bytes | str | FileBody):
        return content, None
    if isinstance(content, OnceBody):
        return content, content
    once = OnceBody(content)
    return once, once


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After", "").strip()
    try:
        return max(float(raw), 0.0) if raw else None
    except ValueError:  # an HTTP date: rare from our server; use the backoff instead
        return None


def _problem_slug(response: httpx.Response) -> str:
    if "json" not in response.headers.get("content-type", ""):
        return ""
    try:
        response.read()
        body = response.json()
    except (ValueError, httpx.HTTPError):
        return ""
    kind = body.get("type", "") if isinstance(body, dict) else ""
    return str(kind).rsplit(":", 1)[-1]
