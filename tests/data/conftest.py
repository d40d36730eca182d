"""Fixtures of the data domain: the CLI fixtures of tests/cli, and a local S3 server for the
Delta tables.

The S3 server (moto) runs as its own process, not in a thread of the test process as the blob
tests' does: some delta-rs calls (``restore``) hold the GIL while they wait on the network, and
an in-process server could then never answer them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cli.test_cli import cli, cli_home  # noqa: F401  - fixtures
from tests.moto_server import MotoProcess

BUCKET = "underlay-tables"


@pytest.fixture(scope="session")
def s3_tables_endpoint() -> Iterator[str]:
    """A moto S3 server process on a free local port, with one bucket."""
    server = MotoProcess().start(BUCKET)
    try:
        yield server.endpoint
    finally:
        server.stop()


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
