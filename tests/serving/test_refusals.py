"""What a deployment refuses: unsigned or tampered versions (before any replica starts),
another project's token (404 on every route), bad input (4xx, the replica keeps serving),
an address report from anything but the replica's own job, and the CLI's failures."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select, update

import underlay
from tests.cli.conftest import clean_env, run_cli
from tests.conftest import LiveServer
from tests.serving.conftest import AUTH_TTL_S, PROJECT, X, model, ready
from underlay.client import Client
from underlay.compute.models import Job
from underlay.errors import InvalidInput
from underlay.ml.registry.models import ModelVersion, ModelVersionFile, RegisteredModel
from underlay.serving.models import Deployment
from underlay.store import Scope
from underlay.store.models import ApiToken

pytestmark = pytest.mark.slow


def _counts(live: LiveServer) -> tuple[int, int]:
    with live.platform.db.session(Scope.everything()) as session:
        jobs = session.scalar(select(func.count()).select_from(Job))
        deployments = session.scalar(select(func.count()).select_from(Deployment))
    return int(jobs or 0), int(deployments or 0)


def _register_tamper_model(admin: Client) -> None:
    for _ in range(2):
        with underlay.start_run(PROJECT, "tamper", client=admin) as run:
            run.log_model(model(0.5), "model", input_example=X[:5])
        admin.register_model(PROJECT, "tamper", run=run.id, path="model")


def test_unsigned_or_tampered_versions_are_refused_before_any_replica(
    live: LiveServer, admin: Client
) -> None:
    _register_tamper_model(admin)
    with live.platform.db.session(Scope.everything()) as session:
        model_id = session.scalar(
            select(RegisteredModel.id).where(RegisteredModel.name == "tamper")
        )
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.model_id == model_id, ModelVersion.version == 1)
            .values(manifest_signature=None)
        )
        v2 = session.scalar(
            select(ModelVersion).where(ModelVersion.model_id == model_id, ModelVersion.version == 2)
        )
        assert v2 is not None
        digest = session.scalar(
            select(ModelVersionFile.digest).where(
                ModelVersionFile.version_id == v2.id, ModelVersionFile.path == "model.skops"
            )
        )
        project_id = v2.project_id
    assert digest is not None
    blob = Path(live.platform.blobs.location(project_id, digest))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    before = _counts(live)
    with pytest.raises(InvalidInput, match=r"version 1 is not signed.*deploy refused") as e:
        admin.deploy(PROJECT, "tampered", "tamper@1")
    assert e.value.extra["file"] == "MANIFEST"
    with pytest.raises(InvalidInput, match=r"file 'model\.skops' of model 'tamper' version 2"):
        admin.deploy(PROJECT, "tampered", "tamper@2")
    assert _counts(live) == before  # no deployment row, no replica job
    refused = [e for e in admin.list_audit(action="deployment.create") if e.outcome != "ok"]
    assert len(refused) == 2


@pytest.fixture(scope="module")
def served(live: LiveServer) -> str:
    with live.client() as admin:
        admin.deploy(PROJECT, "guarded", "churn@champion", replicas=1)
        ready(admin, "guarded", 1)
    return "guarded"


def _outsider(admin: Client) -> str:
    admin.create_user("mallory", password="correct horse battery")
    admin.add_member("other", "mallory", "admin")
    return admin.create_token("mallory-token", user="mallory").token


ROUTES = [
    ("GET", ""),
    ("GET", "/{d}"),
    ("PATCH", "/{d}", {"replicas": 3}),
    ("DELETE", "/{d}"),
    ("POST", "/{d}/canary", {"model": "churn@2"}),
    ("POST", "/{d}/promote", {}),
    ("POST", "/{d}/rollback", {}),
    ("GET", "/{d}/events"),
    ("POST", "/{d}/predict", {"records": [[0.1, 0.2, 0.3, 0.4]]}),
    ("POST", "/{d}/feedback", {"labels": [{"request_id": "request-0001", "label": 1}]}),
    ("GET", "/{d}/stats"),
    ("POST", "/{d}/replicas/1/report", {"url": "http://127.0.0.1:9"}),
]


def test_another_projects_token_gets_404_on_every_route(
    live: LiveServer, admin: Client, served: str
) -> None:
    token = _outsider(admin)
    base = f"{live.url}/api/v1/projects/{PROJECT}/deployments"
    headers = {"Authorization": f"Bearer {token}"}
    for method, path, *body in ROUTES:
        url = base + path.format(d=served)
        response = httpx.request(method, url, headers=headers, json=body[0] if body else None)
        assert response.status_code == 404, (method, path, response.text)
        assert served not in response.json().get("detail", "")
    assert admin.read_deployment(PROJECT, served).desired_replicas == 1  # nothing changed


def _post(live: LiveServer, name: str, content: bytes, token: str | None = None) -> httpx.Response:
    url = f"{live.url}/api/v1/projects/{PROJECT}/deployments/{name}/predict"
    headers = {
        "Authorization": f"Bearer {token or live.admin_token}",
        "content-type": "application/json",
    }
    return httpx.post(url, content=content, headers=headers, timeout=60)


def _infer(live: LiveServer, name: str, token: str) -> httpx.Response:
    url = f"{live.url}/api/v1/projects/{PROJECT}/deployments/{name}/v2/models/{name}/infer"
    tensor = {"name": "input", "datatype": "FP64", "shape": [1, 4], "data": X[0].tolist()}
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(url, json={"inputs": [tensor]}, headers=headers, timeout=60)


def test_revoked_expired_tokens_and_removed_members_are_refused_after_the_cache_ttl(
    live: LiveServer, admin: Client, served: str
) -> None:
    """The data plane trusts a token it authenticated for ``server.auth_cache_ttl_s``: once
    that long has passed after a revocation, an expiry or a removed membership, both
    prediction routes refuse (waiting the TTL, never asserting on how fast)."""
    admin.create_user("carol", password="correct horse battery")
    admin.add_member(PROJECT, "carol", "member")
    tokens = [admin.create_token(f"carol-{i}", user="carol") for i in range(3)]
    body = json.dumps({"records": X[:1].tolist()}).encode()
    for created in tokens:  # each authenticated, and now trusted from the cache
        assert _post(live, served, body, created.token).status_code == 200
        assert _infer(live, served, created.token).status_code == 200

    revoked, expired, member = tokens
    admin.revoke_token(revoked.id)
    with live.platform.db.session(Scope.everything()) as session:
        session.execute(
            update(ApiToken)
            .where(ApiToken.id == expired.id)
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    time.sleep(AUTH_TTL_S)
    for created, words in ((revoked, "revoked"), (expired, "expired")):
        for answer in (
            _post(live, served, body, created.token),
            _infer(live, served, created.token),
        ):
            assert answer.status_code == 401, answer.text
            assert words in answer.json()["detail"]
            assert answer.headers["www-authenticate"].startswith("Bearer")

    assert _post(live, served, body, member.token).status_code == 200
    admin.remove_member(PROJECT, "carol")
    time.sleep(AUTH_TTL_S)
    assert _post(live, served, body, member.token).status_code == 404
    assert _infer(live, served, member.token).status_code == 404


def test_a_token_is_looked_up_once_however_many_requests_wait_and_renewed_under_traffic(
    live: LiveServer, admin: Client, served: str
) -> None:
    """Requests that find no trusted entry for their token share one database look-up; under
    steady traffic the entry is renewed before it lapses, so no later request waits for one
    (before, every request in flight when the entry lapsed looked the token up itself)."""
    admin.create_user("dave", password="correct horse battery")
    admin.add_member(PROJECT, "dave", "member")
    token = admin.create_token("dave-token", user="dave").token
    body = json.dumps({"records": X[:1].tolist()}).encode()
    plane = live.app.state.dataplane
    lookups, waits = plane.auth_lookups, plane.auth_waits
    url = f"{live.url}/api/v1/projects/{PROJECT}/deployments/{served}/predict"
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    clients = [httpx.Client(timeout=60) for _ in range(24)]
    for client in clients:  # connected beforehand, so that the 24 requests arrive together
        assert client.get(f"{live.url}/healthz").status_code == 200
    barrier = threading.Barrier(len(clients))

    def post(client: httpx.Client) -> int:
        barrier.wait()
        return client.post(url, content=body, headers=headers).status_code

    with ThreadPoolExecutor(len(clients)) as pool:
        assert list(pool.map(post, clients)) == [200] * len(clients)
    for client in clients:
        client.close()
    assert plane.auth_lookups - lookups == 1
    first_waits = plane.auth_waits - waits
    assert first_waits >= 1

    deadline = time.monotonic() + 3 * AUTH_TTL_S
    while time.monotonic() < deadline:
        assert _post(live, served, body, token).status_code == 200
        time.sleep(0.02)
    assert plane.auth_lookups - lookups >= 3  # renewed, roughly once per TTL
    assert plane.auth_waits - waits == first_waits  # and nobody waited for a renewal


BAD: list[tuple[Any, str]] = [
    ({"records": [[0.1, 0.2, 0.3]]}, "shape"),
    ({"records": [["a", "b", "c", "d"]]}, "must be"),
    ({"records": [[0.1, 0.2], [0.1, 0.2, 0.3, 0.4]]}, "input"),
    ({"records": []}, "records"),
    ({"rows": [[1, 2, 3, 4]]}, "records"),
    ([1, 2], "records"),
]


def test_bad_input_is_a_4xx_and_the_replica_keeps_serving(live: LiveServer, served: str) -> None:
    for body, words in BAD:
        response = _post(live, served, json.dumps(body).encode())
        assert response.status_code == 400, (body, response.text)
        assert words in response.json()["detail"], (body, response.text)
    assert _post(live, served, b"{not json").status_code == 400
    huge = b'{"records": [' + b"[0.1, 0.2, 0.3, 0.4]," * 5_000_000 + b"[0, 0, 0, 0]]}"
    assert _post(live, served, huge).status_code == 413
    good = _post(live, served, json.dumps({"records": X[:4].tolist()}).encode())
    assert good.status_code == 200
    assert good.json()["predictions"] == model().predict(X[:4]).tolist()


def test_only_the_replicas_own_job_may_report_its_address(
    live: LiveServer, admin: Client, served: str
) -> None:
    replica = admin.read_deployment(PROJECT, served).replicas[0]
    url = f"{live.url}/api/v1/projects/{PROJECT}/deployments/{served}/replicas/{replica.id}/report"
    headers = {"Authorization": f"Bearer {live.admin_token}"}
    response = httpx.post(url, json={"url": "http://127.0.0.1:9"}, headers=headers)
    assert response.status_code == 403
    assert "only the job serving replica" in response.json()["detail"]
    bad = httpx.post(url, json={"url": "http://evil.example:80"}, headers=headers)
    assert bad.status_code == 422


def test_cli_deploy_show_predict_scale_rm(live: LiveServer, tmp_path: Path) -> None:
    env = clean_env(
        UNDERLAY_URL=live.url, UNDERLAY_TOKEN=live.admin_token, UNDERLAY_HOME=str(tmp_path)
    )

    def cli(*args: str, ok: bool = True) -> Any:
        result = run_cli(*args, env=env)
        assert (result.returncode == 0) == ok, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result

    out = cli(
        "deploy",
        "-p",
        PROJECT,
        "cli-dep",
        "--model",
        "churn@champion",
        "--replicas",
        "1",
        "--max-batch",
        "16",
        "--max-wait-ms",
        "2",
    )
    assert out.stdout.strip() == f"{live.url}/api/v1/projects/{PROJECT}/deployments/cli-dep/predict"
    with live.client() as admin:
        ready(admin, "cli-dep", 1)
    shown = json.loads(cli("deployments", "show", "-p", PROJECT, "cli-dep", "--json").stdout)
    assert [r["state"] for r in shown["replicas"]] == ["ready"]
    assert shown["traffic"] == [{"arm": "stable", "version": 1, "weight": 1.0}]
    assert shown["canary"] is None and shown["max_batch"] == 16
    body = json.dumps({"records": X[:3].tolist()})
    answer = json.loads(cli("predict", "-p", PROJECT, "cli-dep", "--json", body).stdout)
    assert answer["predictions"] == model().predict(X[:3]).tolist()
    assert "cli-dep" in cli("deployments", "ls", "-p", PROJECT).stdout
    cli("deployments", "scale", "-p", PROJECT, "cli-dep", "2")
    assert (
        json.loads(cli("deployments", "show", "-p", PROJECT, "cli-dep", "--json").stdout)[
            "desired_replicas"
        ]
        == 2
    )
    bad = cli("predict", "-p", PROJECT, "cli-dep", "--json", '{"records": [[1]]}', ok=False)
    assert bad.stderr.startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
    missing = cli("deploy", "-p", PROJECT, "x", "--model", "nosuch@1", ok=False)
    assert "model 'nosuch' not found" in missing.stderr
    cli("deployments", "rm", "-p", PROJECT, "cli-dep", "--yes")
    gone = cli("deployments", "show", "-p", PROJECT, "cli-dep", ok=False)
    assert "deployment 'cli-dep' not found" in gone.stderr
    assert np.asarray(answer["predictions"]).shape == (3,)


def test_the_prediction_routes_are_timed_under_their_route_templates(
    live: LiveServer, served: str
) -> None:
    """The fast lane (``underlay.api.hot``) answers the two prediction routes without
    FastAPI's router; the latency histogram still labels them with their templates, never
    with the deployment's name."""
    from tests.monitoring.test_metrics import _scrape, _value

    base = "/api/v1/projects/{project}/deployments/{name}"
    routes = {
        "json": {"route": f"{base}/predict", "method": "POST", "status": "200"},
        "v2": {"route": f"{base}/v2/models/{{model}}/infer", "method": "POST", "status": "200"},
        "refused": {"route": f"{base}/predict", "method": "POST", "status": "400"},
    }
    name = "underlay_api_request_duration_seconds_count"
    before = _scrape(live.url, live.admin_token)
    assert _post(live, served, json.dumps({"records": X[:2].tolist()}).encode()).status_code == 200
    assert _infer(live, served, live.admin_token).status_code == 200
    assert _post(live, served, b"{not json").status_code == 400
    assert _post(live, "d" * 64, b"{}").status_code == 422  # FastAPI's own path validation
    after = _scrape(live.url, live.admin_token)
    for labels in routes.values():
        assert _value(after, name, **labels) == _value(before, name, **labels) + 1, labels
    api = [labels for n, s in after.items() if n.startswith("underlay_api_") for labels, _ in s]
    assert api and not any(served in str(labels) for labels in api)
