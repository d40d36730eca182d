"""The blob store contract against an S3-compatible server (moto, on 127.0.0.1).

The same tests as the local folder (:class:`tests.test_blobs.BlobStoreContract`), through the same
code: only the ``blobs`` settings differ.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
from moto.server import ThreadedMotoServer

from tests.test_blobs import BlobStoreContract

pytestmark = pytest.mark.s3

BUCKET = "underlay-test"
CREDENTIALS = {"key": "testing", "secret": "testing"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free local port, with one bucket."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["key"],
        aws_secret_access_key=CREDENTIALS["secret"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    client.close()
    try:
        yield endpoint
    finally:
        server.stop()


class TestS3BlobStore(BlobStoreContract):
    @pytest.fixture
    def blob_config(self, s3_endpoint: str) -> dict[str, Any]:
        return {
            "url": f"s3://{BUCKET}/{secrets.token_hex(6)}",  # a fresh prefix per test
            "storage_options": {"endpoint_url": s3_endpoint, **CREDENTIALS},
        }
