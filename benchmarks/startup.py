"""Start-up benchmark: `underlay --help` and `underlay up` until /readyz answers.

Targets (issue 2): --help under 0.5 s, server ready under 2 s. The baseline printed beside
each is a bare `python -c pass`, measured in the same run, so the ratio shows what underlay
itself adds on this machine.

    .venv/bin/python benchmarks/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def _time(cmd: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_ready_s() -> float:
    home = tempfile.mkdtemp(prefix="underlay-bench-")
    port = _free_port()
    env = {
        **os.environ,
        "UNDERLAY_HOME": home,
        "UNDERLAY_ADMIN_TOKEN": "ul_" + secrets.token_urlsafe(32),
    }
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "underlay.cli.main", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("server exited during start-up") from None
                time.sleep(0.01)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    bare = statistics.median(_time([sys.executable, "-c", "pass"]) for _ in range(args.runs))
    helps = statistics.median(
        _time([sys.executable, "-m", "underlay.cli.main", "--help"]) for _ in range(args.runs)
    )
    ready = statistics.median(server_ready_s() for _ in range(args.runs))
    print(f"python -c pass (baseline)   {bare * 1000:7.0f} ms")
    print(
        f"underlay --help             {helps * 1000:7.0f} ms  ({helps / bare:.1f}x baseline; "
        f"target < 500 ms: {'met' if helps < 0.5 else 'MISSED'})"
    )
    print(
        f"underlay up -> /readyz      {ready * 1000:7.0f} ms  ({ready / bare:.1f}x baseline; "
        f"target < 2000 ms: {'met' if ready < 2 else 'MISSED'}; fresh home, migrations included)"
    )


if __name__ == "__main__":
    main()
