"""The cost of the data plane's hop to a replica, by HTTP client: ``httpx.AsyncClient`` (what
``serving/dataplane.py`` uses) against a lean asyncio keep-alive client writing a prebuilt
request head and body in one write, both to the same raw-ASGI uvicorn server answering a
small binary body, measured in the same run.

For each client: calls/s and p50 one call at a time, and the CPU time of the *client* process
per call (the part the API server pays), at concurrency 1 and 16 (16 connections).

    python benchmarks/replica_hop.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_peers import free_port, process

BODY = b"\x00" * 515  # about a single-row batch on the wire
ANSWER = b"\x16\x00\x00\x00" + b"\x00" * 30


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The replica's shape: a raw ASGI app reading the body and answering bytes."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/octet-stream")]
    headers.append((b"content-length", str(len(ANSWER)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


class LeanClient:
    """One keep-alive HTTP/1.1 connection: prebuilt head, one write, Content-Length reads."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port = host, port
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: "
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> bytes:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(b"%s%d\r\n\r\n%s" % (self.head, len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        found = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        if head[9:12] != b"200" or found is None:
            raise RuntimeError(f"unexpected answer: {head[:200]!r}")
        return await self.reader.readexactly(int(found.group(1)))


async def _drive(post: Any, calls: int, concurrency: int) -> tuple[float, float, float]:
    latencies: list[float] = []

    async def worker(n: int, send: Any) -> None:
        for _ in range(n):
            started = time.perf_counter()
            assert await send(BODY) == ANSWER
            latencies.append(time.perf_counter() - started)

    senders = [post() for _ in range(concurrency)]
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(calls // concurrency, s) for s in senders))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    latencies.sort()
    done = len(latencies)
    return done / wall, latencies[done // 2] * 1000, cpu / done * 1e6


async def measure(url: str, calls: int, concurrency: int) -> dict[str, tuple[float, float, float]]:
    import httpx

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    async with httpx.AsyncClient() as client:

        def httpx_sender() -> Any:
            async def send(body: bytes) -> bytes:
                answer = await client.post(f"{url}/predict", content=body)
                return answer.content

            return send

        def lean_sender() -> Any:
            return LeanClient("127.0.0.1", port, "/predict").post

        out = {}
        for name, sender in (("httpx.AsyncClient", httpx_sender), ("lean asyncio", lean_sender)):
            await _drive(sender, 200, concurrency)  # warm-up: connections, caches
            out[name] = await _drive(sender, calls, concurrency)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=args.serve, log_config=None, access_log=False)
        return
    import tempfile

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="ul-hop-") as tmp:
        cmd = [sys.executable, __file__, "--serve", str(port)]
        with process(cmd, Path(tmp) / "replica.log", f"{url}/ready"):
            rows = {c: asyncio.run(measure(url, args.calls, c)) for c in (1, 16)}
    print(f"command: python benchmarks/replica_hop.py {' '.join(sys.argv[1:])}")
    print(f"{'client':<20}{'c':>4}{'calls/s':>10}{'p50 ms':>9}{'client CPU us/call':>20}")
    for concurrency, by in rows.items():
        for name, (rate, p50, cpu) in by.items():
            print(f"{name:<20}{concurrency:>4}{rate:>10,.0f}{p50:>9.2f}{cpu:>20,.0f}")
        ratio = by["httpx.AsyncClient"][2] / by["lean asyncio"][2]
        print(f"  c={concurrency}: httpx spends {ratio:.1f}x the lean client's CPU per call")


if __name__ == "__main__":
    main()
