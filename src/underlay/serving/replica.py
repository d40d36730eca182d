"""A replica: one process that serves one verified model version to the API server.

Run by the platform as a service job (``python -m underlay.serving.replica``). It loads the
model with its own job token through the SDK's verified load (signature and every file's hash
checked; the weights are decrypted only into this process's private temporary folder, which
is removed once loaded), binds 127.0.0.1 on an ephemeral port, and reports its URL to the
server with its job token (the server hears it only from the job serving that replica).

Every call must carry the replica's secret (``X-Replica-Secret``, compared in constant time):
the job got it as a job secret, the server keeps it sealed; no other local process can call
the model around the server's authentication, limits and logs. Batches arrive and leave in
the binary form of :mod:`underlay.serving.wire`.

Routes: ``GET /live`` (the process answers), ``GET /ready`` (model loaded, not draining),
``POST /predict`` (a batch). On SIGTERM uvicorn stops accepting connections and finishes the
requests it holds before the process exits (graceful drain).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np

from underlay.errors import UnderlayError
from underlay.serving import wire

log = logging.getLogger("underlay.serving.replica")
SECRET_ENV = "REPLICA_SECRET"  # noqa: S105 - a variable name
SECRET_HEADER = b"x-replica-secret"
MAX_BODY = 256 * 1024 * 1024

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def predict_batch(model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``model`` on a batch and name its outputs as its signature does."""
    batch: Any = next(iter(inputs.values())) if len(inputs) == 1 else inputs
    result = model.predict(batch)
    if isinstance(result, dict):
        return {str(k): np.asarray(v) for k, v in result.items()}
    signature = getattr(model, "signature", None)
    outputs = signature.outputs if signature is not None else []
    name = outputs[0].name if len(outputs) == 1 else "output"
    return {name: np.asarray(result)}


class ReplicaApp:
    """The replica's ASGI app: three routes, no framework (the hot path is one call)."""

    def __init__(self, model: Any, secret: str) -> None:
        self.model = model
        self.secret = secret.encode()
        self.draining = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        given = dict(scope["headers"]).get(SECRET_HEADER, b"")
        if not hmac.compare_digest(given, self.secret):
            await _respond(send, 403, b"missing or wrong replica secret")
            return
        path, method = scope["path"], scope["method"]
        if path == "/live":
            await _respond(send, 200, b"live")
        elif path == "/ready":
            ok = not self.draining
            await _respond(send, 200 if ok else 503, b"ready" if ok else b"draining")
        elif path == "/predict" and method == "POST":
            await self._predict(receive, send)
        else:
            await _respond(send, 404, b"not found")

    async def _predict(self, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if body is None:
            await _respond(send, 413, b"batch too large")
            return
        try:
            outputs = predict_batch(self.model, wire.decode(body))
            frame = wire.encode(outputs)
        except UnderlayError as exc:
            await _respond(send, 400, exc.message.encode()[:2000])
            return
        except Exception as exc:
            text = f"the model failed on this input: {type(exc).__name__}: {exc}"
            await _respond(send, 422, text.encode()[:2000])
            return
        await _respond(send, 200, frame, wire.CONTENT_TYPE)


async def _read_body(receive: Receive) -> bytes | None:
    parts, size, more = [], 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        parts.append(chunk)
        more = message.get("more_body", False)
    return b"".join(parts)


async def _respond(send: Send, status: int, body: bytes, kind: str = "text/plain") -> None:
    headers = [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _report(args: argparse.Namespace, url: str) -> None:
    from underlay.client import Client

    path = f"/projects/{args.project}/deployments/{args.deployment}/replicas/{args.replica}/report"
    with Client.from_env() as client:
        for attempt in range(30):
            try:
                client._request("POST", path, json={"url": url})
                return
            except UnderlayError as exc:
                if attempt == 29 or exc.status < 500:
                    raise
                time.sleep(0.5)


async def _serve(args: argparse.Namespace, app: ReplicaApp) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=30,
        backlog=1024,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    await asyncio.to_thread(_report, args, f"http://127.0.0.1:{port}")
    log.info("replica %s serving on 127.0.0.1:%d", args.replica, port)
    await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="underlay-replica", description=__doc__)
    parser.add_argument("--project", required=True)
    parser.add_argument("--deployment", required=True)
    parser.add_argument("--replica", required=True, type=int)
    parser.add_argument("--model", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    secret = os.environ.pop(SECRET_ENV, "")
    if len(secret) < 32:
        print(f"error: no replica secret in {SECRET_ENV}", file=sys.stderr)
        return 2
    from underlay.client import Client

    try:
        with Client.from_env() as client:
            model = client.load_model(args.project, args.model)
    except UnderlayError as exc:
        print(f"error: cannot load {args.model}: {exc.message}", file=sys.stderr)
        return 1
    asyncio.run(_serve(args, ReplicaApp(model, secret)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
