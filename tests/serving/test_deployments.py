"""Deployments end to end: a signed scikit-learn model deployed on replica processes started by
the scheduler and the local agent, predictions through the JSON route, and the control plane
(scale, rolling update, remove), on a real server on 127.0.0.1."""

from __future__ import annotations

from tests.serving.conftest import PROJECT, X, model, ready
from underlay.client import Client


def test_deploy_and_predict_through_json(admin: Client) -> None:
    created = admin.deploy(PROJECT, "churn-api", "churn@champion", replicas=2, max_batch=32)
    assert created.version == 1 and created.desired_replicas == 2
    assert created.endpoint.endswith(f"/projects/{PROJECT}/deployments/churn-api/predict")
    ready(admin, "churn-api", 2)
    answer = admin.predict(PROJECT, "churn-api", X[:7].tolist(), request_id="request-0001")
    assert answer["predictions"] == model().predict(X[:7]).tolist()
    assert answer["model_version"] == 1 and answer["request_id"] == "request-0001"
