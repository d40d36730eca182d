"""Deployments end to end: a signed scikit-learn model deployed on replica processes started by
the scheduler and the local agent, predictions through the JSON route, and the control plane
(scale, rolling update, remove), on a real server on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import LiveServer
from tests.serving.conftest import PROJECT, X, model, ready, wait_until
from tests.serving.load import Load
from underlay.client import Client
from underlay.compute.models import JobAttempt
from underlay.errors import NotFound
from underlay.store import Scope

pytestmark = pytest.mark.slow


def _pid_of(live: LiveServer, job_id: int) -> int:
    with live.platform.db.session(Scope.everything()) as session:
        pid = session.scalar(
            select(JobAttempt.pid)
            .where(JobAttempt.job_id == job_id, JobAttempt.state == "running")
            .order_by(JobAttempt.id.desc())
        )
    assert pid is not None
    return int(pid)


def test_deploy_and_predict_through_json(admin: Client) -> None:
    created = admin.deploy(PROJECT, "churn-api", "churn@champion", replicas=2, max_batch=32)
    assert created.version == 1 and created.desired_replicas == 2
    assert created.endpoint.endswith(f"/projects/{PROJECT}/deployments/churn-api/predict")
    found = ready(admin, "churn-api", 2)
    assert [r.arm for r in found.replicas] == ["stable", "stable"]
    assert {r.job_state for r in found.replicas} == {"running"}
    assert [(t.arm, t.version, t.weight) for t in found.traffic] == [("stable", 1, 1.0)]
    answer = admin.predict(PROJECT, "churn-api", X[:7].tolist(), request_id="request-0001")
    assert answer["predictions"] == model().predict(X[:7]).tolist()
    assert answer["model_version"] == 1 and answer["request_id"] == "request-0001"
    assert [e.kind for e in admin.deployment_events(PROJECT, "churn-api")] == ["deploy"]
    assert [d.name for d in admin.list_deployments(PROJECT)] == ["churn-api"]
    admin.delete_deployment(PROJECT, "churn-api")


def test_a_killed_replica_under_load_loses_no_request_and_heals(
    live: LiveServer, admin: Client
) -> None:
    admin.deploy(PROJECT, "churn-kill", "churn@1", replicas=2)
    found = ready(admin, "churn-kill", 2)
    victim = found.replicas[0]
    assert victim.job_id is not None
    with Load(live.url, live.admin_token, "churn-kill") as load:
        wait_until(lambda: load.total >= 50, "some load before the kill")
        os.kill(_pid_of(live, victim.job_id), signal.SIGKILL)

        def healed() -> bool:
            now = admin.read_deployment(PROJECT, "churn-kill")
            again = [r for r in now.replicas if r.id == victim.id]
            return bool(again and again[0].restarts >= 1 and now.ready_replicas == 2)

        wait_until(healed, "the killed replica to be restarted and ready", within_s=90)
        served = load.total
        wait_until(lambda: load.total >= served + 50, "load after healing")
    assert load.wrong == [] and set(load.outcomes) <= {"ok", "retryable"}, load.outcomes
    assert load.outcomes["ok"] >= 100
    kinds = [e.kind for e in admin.deployment_events(PROJECT, "churn-kill")]
    assert "replica.restart" in kinds
    admin.delete_deployment(PROJECT, "churn-kill")


def test_rolling_update_drops_no_request(live: LiveServer, admin: Client) -> None:
    admin.deploy(PROJECT, "churn-roll", "churn@1", replicas=1)
    ready(admin, "churn-roll", 1)
    with Load(live.url, live.admin_token, "churn-roll") as load:
        wait_until(lambda: load.versions[1] >= 30, "version 1 answering")
        updating = admin.update_deployment(PROJECT, "churn-roll", model="churn@2", reason="retrain")
        assert updating.target_version == 2 and updating.state == "updating"
        ready(admin, "churn-roll", 1, version=2)
        wait_until(
            lambda: (
                not [
                    r
                    for r in admin.read_deployment(PROJECT, "churn-roll").replicas
                    if r.version == 1
                ]
            ),
            "the old replica to drain and go",
        )
        served = load.versions[2]
        wait_until(lambda: load.versions[2] >= served + 30, "version 2 answering")
    assert load.wrong == [] and set(load.outcomes) == {"ok"}, load.outcomes
    kinds = [e.kind for e in admin.deployment_events(PROJECT, "churn-roll")]
    assert kinds == ["deploy", "update", "update.done"]
    admin.delete_deployment(PROJECT, "churn-roll")


def test_a_rolling_update_replaces_one_replica_at_a_time(live: LiveServer, admin: Client) -> None:
    """maxSurge 1, maxUnavailable 0: at no point more than replicas + 1 replicas (draining
    ones count until their jobs end), never fewer ready than wanted, both versions answering
    meanwhile, and no request dropped or answered wrongly."""
    admin.deploy(PROJECT, "churn-surge", "churn@1", replicas=2, cpus=0.5)  # 3 fit on 2 cores
    ready(admin, "churn-surge", 2)
    seen: list[tuple[int, int, int]] = []  # (replicas, ready, version) per look
    done = threading.Event()

    def watch() -> None:
        with live.client() as c:
            while not done.is_set():
                found = c.read_deployment(PROJECT, "churn-surge")
                stable = [r for r in found.replicas if r.arm == "stable"]
                up = sum(r.state == "ready" for r in stable)
                seen.append((len(stable), up, found.version))

    watcher = threading.Thread(target=watch, daemon=True)
    with Load(live.url, live.admin_token, "churn-surge") as load:
        wait_until(lambda: load.versions[1] >= 30, "version 1 answering")
        watcher.start()
        admin.update_deployment(PROJECT, "churn-surge", model="churn@2", reason="retrain")
        ready(admin, "churn-surge", 2, version=2)
        wait_until(
            lambda: (
                [r.version for r in admin.read_deployment(PROJECT, "churn-surge").replicas]
                == [2, 2]
            ),
            "the old replicas to drain and go",
        )
        served = load.versions[2]
        wait_until(lambda: load.versions[2] >= served + 30, "version 2 answering")
        done.set()
        watcher.join(10)
    assert len(seen) > 20 and {v for _, _, v in seen} == {1, 2}
    assert max(n for n, _, _ in seen) == 3, seen  # the surge was used, never exceeded
    assert min(up for _, up, _ in seen) >= 2, seen
    assert load.wrong == [] and set(load.outcomes) == {"ok"}, load.outcomes
    starts = [e for e in admin.deployment_events(PROJECT, "churn-surge")]
    assert [e.kind for e in starts] == ["deploy", "update", "update.done"]
    admin.delete_deployment(PROJECT, "churn-surge")


def test_scale_up_down_and_remove(live: LiveServer, admin: Client) -> None:
    admin.deploy(PROJECT, "churn-scale", "churn@1", replicas=1)
    ready(admin, "churn-scale", 1)
    admin.scale_deployment(PROJECT, "churn-scale", 2)
    found = ready(admin, "churn-scale", 2)
    assert sorted(r.slot for r in found.replicas) == [0, 1]
    admin.scale_deployment(PROJECT, "churn-scale", 1)
    wait_until(
        lambda: [r.slot for r in admin.read_deployment(PROJECT, "churn-scale").replicas] == [0],
        "the extra replica to drain and go",
    )
    assert admin.predict(PROJECT, "churn-scale", X[:2].tolist())["model_version"] == 1
    jobs = [r.job_id for r in admin.read_deployment(PROJECT, "churn-scale").replicas]
    admin.delete_deployment(PROJECT, "churn-scale")
    with pytest.raises(NotFound, match="deployment 'churn-scale' not found"):
        admin.read_deployment(PROJECT, "churn-scale")
    with pytest.raises(NotFound):
        admin.predict(PROJECT, "churn-scale", X[:2].tolist())
    for job_id in jobs:
        assert job_id is not None
        done = admin.wait_job(PROJECT, job_id, timeout_s=30)
        assert done.state == "cancelled"
    time.sleep(0)  # nothing left running


def test_replica_refuses_calls_without_its_secret(live: LiveServer, admin: Client) -> None:
    admin.deploy(PROJECT, "churn-secret", "churn@1", replicas=1)
    ready(admin, "churn-secret", 1)
    from underlay.serving.models import DeploymentReplica

    with live.platform.db.session(Scope.everything()) as session:
        url = session.scalar(
            select(DeploymentReplica.url).where(DeploymentReplica.state == "ready")
        )
    assert url is not None and url.startswith("http://127.0.0.1:")
    for headers in ({}, {"x-replica-secret": "guess"}):
        assert httpx.post(f"{url}/predict", content=b"", headers=headers).status_code == 403
        assert httpx.get(f"{url}/ready", headers=headers).status_code == 403
    admin.delete_deployment(PROJECT, "churn-secret")
