"""A bounded keep-alive HTTP/1.1 load generator for the serving benchmarks: ``wrk`` when it is
installed (C, one thread, nearly free next to the servers on a small machine), else a lean
asyncio raw-socket generator in this module.

Both are closed-loop: ``concurrency`` connections, each sending its next request as soon as
the previous answer is read, for ``duration_s``. Both report requests/s, p50 and p99 latency
and errors (socket errors, timeouts and any status >= 400). They only talk to 127.0.0.1.
Install wrk with ``scripts/ensure-bench-tools.sh`` (``apt-get install wrk``).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Load:
    """One request, sent over and over: method, URL, body and headers."""

    url: str
    method: str = "GET"
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float | None = None
    """CPU (user + system) the server's processes spent per request, when measured."""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run(load: Load, concurrency: int, duration_s: float, *, generator: str = "auto") -> Result:
    """Drive ``load`` with ``concurrency`` keep-alive connections for ``duration_s``."""
    host = urlsplit(load.url).hostname
    if host != "127.0.0.1":
        raise ValueError(f"the load generator only talks to 127.0.0.1, not {host}")
    wrk = wrk_path()
    if generator == "wrk" or (generator == "auto" and wrk):
        if not wrk:
            raise SystemExit("wrk is not installed: run scripts/ensure-bench-tools.sh")
        return _run_wrk(wrk, load, concurrency, duration_s)
    return asyncio.run(_run_asyncio(load, concurrency, duration_s))


# -- wrk ------------------------------------------------------------------------------------

_LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
    .. '"errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def _lua(load: Load, body_path: Path) -> str:
    lines = [f"wrk.method = {json.dumps(load.method)}"]
    if load.body:
        lines.append(f"local f = assert(io.open({json.dumps(str(body_path))}, 'rb'))")
        lines.append("wrk.body = f:read('*a')")
        lines.append("f:close()")
    for name, value in load.headers:
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    return "\n".join(lines) + "\n" + _LUA_DONE


def _run_wrk(wrk: str, load: Load, concurrency: int, duration_s: float) -> Result:
    with tempfile.TemporaryDirectory(prefix="ul-wrk-") as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(load.body)
        script = Path(tmp) / "load.lua"
        script.write_text(_lua(load, body))
        cmd = [wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s"]
        cmd += ["--timeout", "10s", "-s", str(script), load.url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
    found = re.search(r"^WRKJSON (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    raw = json.loads(found.group(1))
    return Result(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        errors=raw["errors"],
    )


# -- asyncio fallback -----------------------------------------------------------------------


def _request_bytes(load: Load) -> tuple[str, int, bytes]:
    parts = urlsplit(load.url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    head = [f"{load.method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    head += [f"{name}: {value}" for name, value in load.headers]
    if load.body or load.method in ("POST", "PUT", "PATCH"):
        head.append(f"Content-Length: {len(load.body)}")
    raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + load.body
    return parts.hostname or "127.0.0.1", parts.port or 80, raw


async def _one_connection(
    host: str, port: int, raw: bytes, stop: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    clock = time.perf_counter
    try:
        while clock() < stop:
            sent = clock()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if length is None:
                raise RuntimeError("the asyncio generator needs Content-Length responses")
            await reader.readexactly(int(length.group(1)))
            latencies.append(clock() - sent)
            if status >= 400:
                errors[0] += 1
    except (OSError, asyncio.IncompleteReadError):
        errors[0] += 1
    finally:
        writer.close()


async def _run_asyncio(load: Load, concurrency: int, duration_s: float) -> Result:
    host, port, raw = _request_bytes(load)
    latencies: list[float] = []
    errors = [0]
    started = time.perf_counter()
    stop = started + duration_s
    await asyncio.gather(
        *(_one_connection(host, port, raw, stop, latencies, errors) for _ in range(concurrency))
    )
    seconds = time.perf_counter() - started
    latencies.sort()

    def pick(q: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return Result(len(latencies), seconds, pick(0.50), pick(0.99), errors[0])
