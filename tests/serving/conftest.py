"""A module-scoped live server with the local agent and a registered, signed scikit-learn
model (``churn``: version 1 aliased ``champion``, version 2 a retrain), shared by the serving
tests: starting replica processes is the slow part, so tests reuse one server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

import underlay
from tests.conftest import ADMIN_TOKEN, LiveServer, sqlite_url
from underlay.client import Client
from underlay.config import ComputeSettings, Settings, ensure_home

T = TypeVar("T")
X = np.random.RandomState(0).rand(60, 4)
Y = (X[:, 0] + X[:, 1] > 1).astype(int)
PROJECT = "shop"
AUTH_TTL_S = 1.0  # server.auth_cache_ttl_s of the live server: revocation tests wait this long


def model(c: float = 1.0, features: int = 4) -> Any:
    """Version 1: ``model()``; version 2: ``model(0.01)``; version 3 (broken: it takes three
    features, so it fails on every request the deployment's signature lets through):
    ``model(1.0, features=3)``."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c).fit(X[:, :features], Y)


def wait_until(check: Callable[[], T], what: str, within_s: float = 60.0) -> T:
    deadline = time.monotonic() + within_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def serve(tmp: Path, database_url: str, **compute: Any) -> Iterator[LiveServer]:
    """A live server on ``database_url`` with the local agent, projects ``shop`` and
    ``other``, and the registered model versions (see the module docstring). ``compute``
    overrides compute settings: ``executor="ray"`` runs the replicas on the Ray cluster the
    agent starts (``ray_temp_dir`` short: Ray's socket paths)."""
    settings = Settings(home=tmp / "home", store={"url": database_url})
    settings.compute = ComputeSettings(
        node_name="node-1", loop_interval_s=0.1, heartbeat_interval_s=0.2, grace_s=5.0, **compute
    )
    settings.admin_token = ADMIN_TOKEN
    settings.server.auth_cache_ttl_s = AUTH_TTL_S
    ensure_home(settings)
    server = LiveServer(settings).start()
    try:
        with server.client() as c:
            wait_until(c.list_nodes, "the local agent to register", within_s=30)
            c.create_project(PROJECT)
            c.create_project("other")
            for index, value in enumerate((1.0, 0.01)):
                with underlay.start_run(PROJECT, "churn", client=c) as run:
                    run.log_model(model(value), "model", input_example=X[:5])
                c.register_model(PROJECT, "churn", run=run.id, path="model")
                if index == 0:
                    c.set_alias(PROJECT, "churn", "champion", 1, reason="first")
            with underlay.start_run(PROJECT, "churn", client=c) as run:  # broken: 3 features
                run.log_model(model(1.0, features=3), "model", input_example=X[:5, :3])
            c.register_model(PROJECT, "churn", run=run.id, path="model")
        yield server
    finally:
        try:
            with server.client() as c:
                for project in (PROJECT, "other"):
                    for deployment in c.list_deployments(project):
                        c.delete_deployment(project, deployment.name)
                for project in (PROJECT, "other"):
                    for job in c.list_jobs(project, state=["queued", "admitted", "running"]):
                        c.wait_job(project, job.id, timeout_s=30)
        finally:
            # always: a server left running (its loop, agent and workers) in this pytest
            # worker would act on the database the next tests reset and reuse
            server.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("serving")
    yield from serve(tmp, sqlite_url(sqlite_template, tmp))


@pytest.fixture
def admin(live: LiveServer) -> Iterator[Client]:  # type: ignore[override]
    with live.client() as c:
        yield c


def ready(client: Client, name: str, replicas: int, version: int | None = None) -> Any:
    """Wait until ``replicas`` replicas of the deployment serve (``version`` if given)."""

    def check() -> Any:
        found = client.read_deployment(PROJECT, name)
        serving = [
            r
            for r in found.replicas
            if r.state == "ready" and r.version == found.version and r.arm == "stable"
        ]
        if version is not None and found.version != version:
            return None
        return found if len(serving) >= replicas and found.state == "ready" else None

    try:
        return wait_until(check, f"{replicas} ready replicas of {name}", within_s=90)
    except AssertionError:
        found = client.read_deployment(PROJECT, name)
        events = [(e.kind, e.reason) for e in client.deployment_events(PROJECT, name)]
        raise AssertionError(f"{found.model_dump_json()}\n{events}") from None
