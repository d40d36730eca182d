"""Pure ASGI middleware: request ids, access logs, body limits, and the last-resort 500.

Body limits are enforced while the body streams in (a client can lie about or omit
Content-Length): JSON routes get ``server.max_json_body``, blob uploads ``blobs.max_size``.
This middleware sits outside the routes' error handling, so it also turns any unexpected
exception into a generic 500 problem that carries the request id, and logs every request,
failed or not.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from underlay.api.problems import problem_body
from underlay.errors import PayloadTooLarge, UnderlayError

log = logging.getLogger("underlay.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_UPLOAD = re.compile(r"^/api/v1/projects/[^/]+/blobs/?$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_json_body: int, max_upload: int) -> None:
        self.app = app
        self.max_json_body = max_json_body
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        limit = self.max_upload if _UPLOAD.match(scope["path"]) else self.max_json_body
        started = time.perf_counter()
        status = {"code": 0}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # an HTTPException passes through FastAPI's body parsing unchanged
                    raise HTTPException(413, f"request body larger than {limit} bytes")
            return message

        declared = headers.get("content-length", "")
        try:
            if declared.isdigit() and int(declared) > limit:
                error: UnderlayError = PayloadTooLarge(f"request body larger than {limit} bytes")
                await _send_problem(send_with_id, scope, request_id, error)
            else:
                await self.app(scope, limited_receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id})
            if not status["code"]:  # nothing sent yet: answer with a problem, not a reset
                error = UnderlayError(
                    "an unexpected error occurred; quote the request id to an operator"
                )
                await _send_problem(send_with_id, scope, request_id, error)
        finally:
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status["code"] or 500,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    "client": (scope.get("client") or ("", 0))[0],
                },
            )


async def _send_problem(send: Send, scope: Scope, request_id: str, error: UnderlayError) -> None:
    body = json.dumps(
        problem_body(error.status, type(error), error.message, scope["path"], request_id)
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
