"""The deployment lifecycle on PostgreSQL (the other tests run on SQLite): deploy, predict,
scale, rolling update and remove, with the reconciler's row locks on a real server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import LiveServer, _reset_pg
from tests.serving.conftest import PROJECT, X, model, ready, serve, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[LiveServer]:
    _reset_pg(pg_url)
    yield from serve(tmp_path_factory.mktemp("serving-pg"), pg_url)


def test_deploy_scale_update_and_remove_on_postgres(live: LiveServer) -> None:
    with live.client() as admin:
        admin.deploy(PROJECT, "churn-pg", "churn@champion", replicas=1, cpus=0.5)
        ready(admin, "churn-pg", 1)
        answer = admin.predict(PROJECT, "churn-pg", X[:5].tolist())
        assert answer["predictions"] == model().predict(X[:5]).tolist()
        admin.scale_deployment(PROJECT, "churn-pg", 2)
        ready(admin, "churn-pg", 2)
        admin.update_deployment(PROJECT, "churn-pg", model="churn@2")
        ready(admin, "churn-pg", 2, version=2)
        wait_until(
            lambda: {r.version for r in admin.read_deployment(PROJECT, "churn-pg").replicas} == {2},
            "the old replicas to drain",
        )
        answer = admin.predict(PROJECT, "churn-pg", X[:5].tolist())
        assert answer["model_version"] == 2
        assert answer["predictions"] == model(0.01).predict(X[:5]).tolist()
        admin.delete_deployment(PROJECT, "churn-pg")
        assert admin.list_deployments(PROJECT) == []
