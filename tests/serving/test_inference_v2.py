"""The Open Inference Protocol routes end to end, with the real ``tritonclient.http`` client as
the peer, against a deployment on replica processes of a real server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from tests.conftest import ADMIN_TOKEN, LiveServer
from tests.serving.conftest import PROJECT, X, model, ready
from underlay.client import Client

NAME = "churn-v2"
BASE = f"/api/v1/projects/{PROJECT}/deployments/{NAME}"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployed(live: LiveServer) -> str:
    with live.client() as admin:
        admin.deploy(PROJECT, NAME, "churn@champion", replicas=1, max_batch=32)
        ready(admin, NAME, 1)
    return f"127.0.0.1:{live.port}{BASE}"


@pytest.fixture
def triton(live: LiveServer, deployed: str) -> Iterator[InferenceServerClient]:
    client = InferenceServerClient(url=deployed)
    yield client
    client.close()


TOKEN = f"Bearer {ADMIN_TOKEN}"


def auth() -> dict[str, str]:
    """Fresh headers for each call: tritonclient's ``infer`` writes its
    Inference-Header-Content-Length into the dict it is given, so a shared dict would carry
    one request's header into the next."""
    return {"Authorization": TOKEN}


def _input(array: np.ndarray[Any, Any], binary: bool = True, datatype: str = "FP64") -> InferInput:
    item = InferInput("input", list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> int:
    return int(exc.value.status() or 0)


def test_tritonclient_reads_metadata_and_health(triton: InferenceServerClient) -> None:
    assert triton.is_server_live(headers=auth())
    assert triton.is_server_ready(headers=auth())
    assert triton.is_model_ready(NAME, headers=auth())
    assert "binary_tensor_data" in triton.get_server_metadata(headers=auth())["extensions"]
    meta = triton.get_model_metadata(NAME, headers=auth())
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    assert not triton.is_model_ready("not-this-model", headers=auth())


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infers_with_binary_and_json_tensors(
    triton: InferenceServerClient, binary: bool
) -> None:
    outputs = [InferRequestedOutput("output", binary_data=binary)]
    result = triton.infer(
        NAME, [_input(X[:7], binary)], outputs=outputs, headers=auth(), request_id="v2-req-1"
    )
    np.testing.assert_array_equal(result.as_numpy("output"), model().predict(X[:7]))
    response = result.get_response()
    assert response["model_version"] == "1" and response["id"] == "v2-req-1"
    # no outputs named: tritonclient asks for every output in binary form
    plain = triton.infer(NAME, [_input(X[:3].astype(np.float32), binary, "FP32")], headers=auth())
    np.testing.assert_array_equal(plain.as_numpy("output"), model().predict(X[:3]))


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_requests_are_inflated(
    triton: InferenceServerClient, algorithm: str
) -> None:
    result = triton.infer(
        NAME, [_input(X[:5])], headers=auth(), request_compression_algorithm=algorithm
    )
    np.testing.assert_array_equal(result.as_numpy("output"), model().predict(X[:5]))


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        (lambda: [_input(X[:2, :3])], r"must have shape \[-1, 4\], got \[2, 3\]"),
        (
            lambda: [_input(np.array([[b"a"] * 4] * 2, dtype=np.object_), datatype="BYTES")],
            "must be FP64, got BYTES",
        ),
        (lambda: [_input(np.where(X[:2] > 0.5, np.nan, X[:2]))], "holds NaN or infinity"),
        (
            lambda: [InferInput("other", [1, 4], "FP64").set_data_from_numpy(X[:1])],
            "model input 'other' is unknown",
        ),
    ],
)
def test_bad_tensors_are_400_naming_the_input_and_the_replica_keeps_serving(
    triton: InferenceServerClient, inputs: Any, match: str
) -> None:
    with pytest.raises(InferenceServerException, match=match) as exc:
        triton.infer(NAME, inputs(), headers=auth())
    assert _status(exc) == 400
    result = triton.infer(NAME, [_input(X[:2])], headers=auth())
    np.testing.assert_array_equal(result.as_numpy("output"), model().predict(X[:2]))


def test_a_missing_input_and_malformed_bodies_are_400(live: LiveServer, deployed: str) -> None:
    url = f"{live.url}{BASE}/v2/models/{NAME}/infer"
    for body in (b'{"inputs": []}', b"{", b'{"inputs": [{"name": "input"}]}'):
        r = httpx.post(url, content=body, headers=auth())
        assert r.status_code == 400, r.text
        assert r.json()["error"] == r.json()["detail"]


def test_an_oversized_body_is_413_before_it_is_read(live: LiveServer, deployed: str) -> None:
    head = (
        f"POST {BASE}/v2/models/{NAME}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {100 * 1024 * 1024}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(head.encode() + b'{"inputs": [')
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_tritonclient_gets_413_for_a_body_over_the_limit(triton: InferenceServerClient) -> None:
    rows = np.zeros((40_000, 4))  # 1.28 MB of binary tensor, over the 1 MiB body limit
    with pytest.raises(InferenceServerException) as exc:
        triton.infer(NAME, [_input(rows)], headers=auth())
    assert _status(exc) == 413
    assert triton.infer(NAME, [_input(X[:1])], headers=auth()).as_numpy("output") is not None


def test_another_projects_token_gets_404_on_every_v2_route(
    live: LiveServer, deployed: str, admin: Client
) -> None:
    admin.create_user("mallory")
    admin.add_member("other", "mallory")
    token = admin.create_token("mallory", user="mallory").token
    headers = {"Authorization": f"Bearer {token}"}
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [0] * 4}]}
    )
    routes = [
        ("GET", "/v2"),
        ("GET", "/v2/health/live"),
        ("GET", "/v2/health/ready"),
        ("GET", f"/v2/models/{NAME}"),
        ("GET", f"/v2/models/{NAME}/ready"),
        ("POST", f"/v2/models/{NAME}/infer"),
    ]
    with httpx.Client(base_url=live.url + BASE) as http:
        for method, path in routes:
            r = http.request(
                method, path, headers=headers, content=body if method == "POST" else None
            )
            assert r.status_code == 404, (path, r.text)
            assert r.json()["error"] == f"project {PROJECT!r} not found"  # as if it did not exist
            assert http.request(method, path).status_code == 401
    other = InferenceServerClient(url=f"127.0.0.1:{live.port}{BASE}")
    try:
        with pytest.raises(InferenceServerException) as exc:
            other.infer(NAME, [_input(X[:1])], headers=headers)
        assert _status(exc) == 404
    finally:
        other.close()


def test_a_token_over_its_rate_limit_gets_429_with_retry_after(live: LiveServer) -> None:
    with live.client() as admin:
        admin.deploy(
            PROJECT,
            "churn-v2-limited",
            "churn@champion",
            replicas=1,
            limits={"rate_per_s": 0.01, "burst": 2},
        )
        ready(admin, "churn-v2-limited", 1)
    base = f"{PROJECT}/deployments/churn-v2-limited"
    client = InferenceServerClient(url=f"127.0.0.1:{live.port}/api/v1/projects/{base}")
    try:
        for _ in range(2):
            client.infer("churn-v2-limited", [_input(X[:1])], headers=auth())
        with pytest.raises(InferenceServerException, match="rate limit") as exc:
            client.infer("churn-v2-limited", [_input(X[:1])], headers=auth())
        assert _status(exc) == 429
    finally:
        client.close()
    url = f"{live.url}/api/v1/projects/{base}/v2/models/churn-v2-limited/infer"
    body = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [0] * 4}]}
    refused = httpx.post(url, json=body, headers=auth())
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
