"""Fixtures of the data domain: the CLI fixtures of tests/cli, and a local S3 server for the
Delta tables.

The S3 server (moto) runs as its own process, not in a thread of the test process as the blob
tests' does: some delta-rs calls (``restore``) hold the GIL while they wait on the network, and
an in-process server could then never answer them.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.cli.test_cli import cli, cli_home  # noqa: F401  - fixtures
from tests.conftest import free_port

BUCKET = "underlay-tables"


@pytest.fixture(scope="session")
def s3_tables_endpoint() -> Iterator[str]:
    """A moto S3 server process on a free local port, with one bucket."""
    import boto3  # type: ignore[import-untyped]

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "moto did not start"
                time.sleep(0.1)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        client.close()
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


def s3_tables_config(endpoint: str) -> dict[str, Any]:
    """The ``data`` settings of a fresh tables root on the local S3 server."""
    return {
        "tables_url": f"s3://{BUCKET}/{secrets.token_hex(6)}",
        "storage_options": {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        },
    }
