"""The cost of the API latency histogram on the hot path, measured in the same run.

Two copies of the app over one platform, one with the timing middleware
(:mod:`underlay.api.timing`) and one with it removed, answer the same authenticated requests
in process (httpx's ASGI transport: no sockets, so the middleware's share is not hidden by
network time). Rounds alternate between the two; the medians of the per-request times are
compared. The request is ``GET /api/v1/users/me`` (token lookup, one small query): a cheap
route, so the ratio is close to the worst case. Also printed: the middleware alone around an
ASGI app that does nothing, in microseconds per request. Target: ratio <= 1.05.

    python benchmarks/metrics_middleware.py --requests 300 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from underlay.api.app import create_app
from underlay.api.timing import RequestTimingMiddleware
from underlay.config import Settings, ensure_home
from underlay.monitoring.metrics import api_latency_histogram
from underlay.platform import Platform

TOKEN = "ul_bench-admin-token-" + "x" * 32


def _apps(platform: Platform) -> tuple[Any, Any]:
    timed = create_app(platform, start=False)
    bare = create_app(platform, start=False)
    bare.user_middleware = [m for m in bare.user_middleware if m.cls is not RequestTimingMiddleware]
    return timed, bare


async def _per_request(app: Any, n: int) -> float:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        started = time.perf_counter()
        for _ in range(n):
            r = await client.get("/api/v1/users/me", headers=headers)
            assert r.status_code == 200, r.text
        return (time.perf_counter() - started) / n


async def _middleware_alone(n: int) -> tuple[float, float]:
    async def nothing(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message: Any) -> None:
        return None

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    wrapped = RequestTimingMiddleware(nothing, histogram=api_latency_histogram())
    scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    times = []
    for app in (nothing, wrapped):
        started = time.perf_counter()
        for _ in range(n):
            await app(dict(scope), receive, send)
        times.append((time.perf_counter() - started) / n)
    return times[0], times[1]


async def main(requests: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp) / "home", admin_token=TOKEN)
        settings.compute.local_agent = False
        ensure_home(settings)
        platform = Platform(settings)
        platform.start()
        try:
            timed, bare = _apps(platform)
            await _per_request(timed, 20)  # warm both
            await _per_request(bare, 20)
            with_mw, without = [], []
            for _ in range(rounds):
                with_mw.append(await _per_request(timed, requests))
                without.append(await _per_request(bare, requests))
        finally:
            platform.close()
    a, b = statistics.median(with_mw), statistics.median(without)
    print(f"GET /api/v1/users/me, {rounds} rounds of {requests} requests, medians:")
    print(f"  with the timing middleware    {a * 1e6:9.1f} us/request")
    print(f"  without it                    {b * 1e6:9.1f} us/request")
    print(f"  ratio                         {a / b:9.3f}  (target <= 1.05)")
    plain, wrapped = await _middleware_alone(100_000)
    print(f"  middleware alone: {(wrapped - plain) * 1e6:.2f} us/request over a no-op app")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
