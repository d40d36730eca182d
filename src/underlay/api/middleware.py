"""Pure ASGI middleware: request ids, access logs, request limits, and the last-resort 500.

Body limits are enforced while the body streams in (a client can lie about or omit
Content-Length): JSON routes get ``server.max_json_body``, blob uploads ``blobs.max_size``.
A request head over ``server.max_header_count`` fields or ``server.max_header_bytes`` bytes
gets 431, and one with both Content-Length and Transfer-Encoding (a request-smuggling
vector) gets 400, before any route runs. Each wait for the next piece of the body is bounded
by ``server.body_read_timeout_s``: a stalled client gets 408 and the connection is closed.

This middleware sits outside the routes' error handling, so it also turns any unexpected
exception into a generic 500 problem that carries the request id, and logs every request,
failed or not (a node agent's successful heartbeats and log uploads at DEBUG: routine
traffic that would bury everything else at INFO). A client that hangs up before its request
is read is not an error of ours: it is logged at INFO with status 499 (nginx's "client
closed request"), without a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from underlay.api.problems import problem_body
from underlay.config import ServerSettings
from underlay.errors import InvalidInput, PayloadTooLarge, UnderlayError

log = logging.getLogger("underlay.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_UPLOAD = re.compile(
    r"^/api/v1/projects/[^/]+/(blobs(/batch)?|tables/[^/]+/(data|parts/[0-9a-f]+/[0-9]+))/?$"
)
# a node agent's heartbeat and log shipping: several a second, logged at DEBUG when they succeed
_ROUTINE = re.compile(r"^/api/v1/nodes/[^/]+(/attempts/\d+/logs)?$")


CLIENT_CLOSED = 499
_READ = frozenset({"x-request-id", "content-length", "transfer-encoding"})  # all this reads


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, *, max_json_body: int, max_upload: int, server: ServerSettings
    ) -> None:
        self.app = app
        self.max_json_body = max_json_body
        self.max_upload = max_upload
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            key: value.decode("latin-1")
            for name, value in scope["headers"]
            if (key := name.decode("latin-1").lower()) in _READ
        }
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        limit = self.max_upload if _UPLOAD.match(scope["path"]) else self.max_json_body
        started = time.perf_counter()
        status = {"code": 0}
        body = {"done": False, "close": False, "disconnected": False}

        async def send_with_id(message: Message) -> None:
            if body["disconnected"]:
                return  # nobody is listening; the access log says 499
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
                closing = any(name.lower() == b"connection" for name, _ in message["headers"])
                if body["close"] and not closing:  # the rest of a refused body is not read
                    message["headers"].append((b"connection", b"close"))
            await send(message)

        received = 0
        timeout = self.server.body_read_timeout_s

        async def limited_receive() -> Message:
            nonlocal received
            if body["done"]:
                return await receive()  # waiting for a disconnect: no deadline
            try:
                async with asyncio.timeout(timeout):  # far cheaper than an anyio cancel scope
                    message = await receive()
            except TimeoutError:
                body["close"] = True
                # an HTTPException passes through FastAPI's body parsing unchanged
                raise HTTPException(
                    408, f"no request body received for {timeout:g} s; the request is dropped"
                ) from None
            if message["type"] == "http.disconnect":
                body["disconnected"] = True
            elif message["type"] == "http.request":
                body["done"] = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > limit:
                    body["close"] = True
                    raise HTTPException(413, f"request body larger than {limit} bytes")
            return message

        try:
            refusal = self._refusal(scope, headers, limit)
            if refusal is not None:
                await _send_problem(send_with_id, scope, request_id, *refusal)
            else:
                await self.app(scope, limited_receive, send_with_id)
        except Exception:
            if body["disconnected"]:
                log.info("client disconnected mid-request", extra={"request_id": request_id})
            else:
                log.exception("unhandled error", extra={"request_id": request_id})
            if not status["code"]:  # nothing sent yet: answer with a problem, not a reset
                error = UnderlayError(
                    "an unexpected error occurred; quote the request id to an operator"
                )
                await _send_problem(send_with_id, scope, request_id, error)
        finally:
            code = status["code"] or (CLIENT_CLOSED if body["disconnected"] else 500)
            routine = scope["method"] in ("PUT", "POST") and _ROUTINE.match(scope["path"])
            log.log(
                logging.DEBUG if routine and code < 400 else logging.INFO,
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": code,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    "client": (scope.get("client") or ("", 0))[0],
                },
            )

    def _refusal(
        self, scope: Scope, headers: dict[str, str], limit: int
    ) -> tuple[UnderlayError, int] | None:
        """Why the request is refused on its head alone (an error and a status), if it is."""
        fields = scope["headers"]
        if len(fields) > self.server.max_header_count:
            return InvalidInput(
                f"the request has {len(fields)} header fields; the limit is "
                f"{self.server.max_header_count} (setting server.max_header_count)"
            ), 431
        size = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
        size += sum(len(name) + len(value) + 4 for name, value in fields)
        if size > self.server.max_header_bytes:
            return InvalidInput(
                f"the request head is over {self.server.max_header_bytes} bytes "
                "(setting server.max_header_bytes)"
            ), 431
        if "content-length" in headers and "transfer-encoding" in headers:
            return InvalidInput(
                "the request has both Content-Length and Transfer-Encoding; send one"
            ), 400
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return PayloadTooLarge(f"request body larger than {limit} bytes"), 413
        return None


async def _send_problem(
    send: Send, scope: Scope, request_id: str, error: UnderlayError, status: int | None = None
) -> None:
    status = status or error.status
    body = json.dumps(
        problem_body(status, type(error), error.message, scope["path"], request_id)
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
