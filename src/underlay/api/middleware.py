"""Pure ASGI middleware: request ids, access logs, and request body limits.

Body limits are enforced while the body streams in (a client can lie about or omit
Content-Length): JSON routes get ``server.max_json_body``, blob uploads ``blobs.max_size``.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from underlay.errors import PayloadTooLarge, problem_type

log = logging.getLogger("underlay.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_UPLOAD = re.compile(r"^/api/v1/projects/[^/]+/blobs/?$")


class _TooLarge(Exception):
    pass


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
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, send_with_id, request_id, limit)
        else:
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise _TooLarge
                return message

            try:
                await self.app(scope, limited_receive, send_with_id)
            except _TooLarge:
                await self._too_large(scope, send_with_id, request_id, limit)
        log.info(
            "request",
            extra={
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "status": status["code"],
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "client": (scope.get("client") or ("", 0))[0],
            },
        )

    async def _too_large(self, scope: Scope, send: Any, request_id: str, limit: int) -> None:
        body = json.dumps(
            {
                "type": problem_type(PayloadTooLarge),
                "title": PayloadTooLarge.title,
                "status": 413,
                "detail": f"request body larger than {limit} bytes",
                "instance": scope["path"],
                "request_id": request_id,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
