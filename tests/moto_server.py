"""moto's S3-compatible server as a child process on a port of its own, which a test can SIGKILL
and start again on the same port (moto keeps its objects in memory: a restarted server starts
empty, and the test makes its bucket again, as a real object store would still hold it)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import httpx

from tests.conftest import free_port

KEY = "testing"  # moto takes any credentials


class MotoProcess:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *buckets: str, within_s: float = 60) -> MotoProcess:
        """Start the server, wait until it answers, and make ``buckets``."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + within_s
        while True:
            try:
                httpx.get(f"{self.endpoint}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                assert self.proc.poll() is None, "moto exited"
                assert time.monotonic() < deadline, f"moto did not start in {within_s} s"
                time.sleep(0.05)
        for bucket in buckets:
            self.create_bucket(bucket)
        return self

    def client(self) -> Any:
        import boto3  # type: ignore[import-untyped]

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=KEY,
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> None:
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: the server's connections drop at once, its state is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
