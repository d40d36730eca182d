"""Seeded data for the ml pages' tests: a live server (no local agent, so deployments stay
pending and nothing runs) with projects ``ml`` and ``other``, runs with metric curves (one
holding ``<script>`` in a param), a model with two signed versions and alias moves, a dataset,
a table with personal data, a quality check and an odd column name, a deployment in a canary,
and a stored drift report. Users (:data:`USERS`, password :data:`PASSWORD`): ``viewer``
(viewer of ``ml``), ``maker`` (member of ``ml``) and ``outsider`` (member of ``other`` only);
``loner`` belongs to no project."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import underlay
from tests.conftest import ADMIN_TOKEN, LiveServer, sqlite_url
from tests.ui.conftest import PASSWORD
from underlay.client import Client
from underlay.config import ComputeSettings, Settings, ensure_home
from underlay.identity import Actor, authenticate
from underlay.store import Scope

EVIL = "<script>alert(1)</script>"

PROJECT = "ml"
USERS = (
    ("viewer", PROJECT, "viewer"),
    ("maker", PROJECT, "member"),
    ("outsider", "other", "member"),
)


@dataclass
class World:
    server: LiveServer
    runs: list[int]
    other_run: int
    tokens: dict[str, str]

    @property
    def app(self) -> Any:
        """The ASGI app the live server serves (its state holds the tables and data plane)."""
        return self.server._server.config.app

    def actor(self, user: str) -> Actor:
        with self.server.platform.db.session(Scope.everything()) as session:
            return authenticate(session, self.tokens[user])


def _model(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    x = np.random.RandomState(0).rand(40, 3)
    return LogisticRegression(C=c).fit(x, (x[:, 0] > 0.5).astype(int)), x


def _runs(c: Client) -> list[int]:
    ids = []
    for i, lr in enumerate(("0.1", "0.01", EVIL)):
        run = c.create_run(PROJECT, "grid", name=f"trial-{i}", params={"lr": lr, "depth": str(i)})
        steps = list(range(50))
        loss = [1.0 / (1 + s * (i + 1) / 10) for s in steps]
        acc = [1 - v for v in loss]
        body = {
            "batch_id": f"seed-{run.id:08d}",
            "metrics": {
                "keys": ["loss", "acc"],
                "key": [0] * 50 + [1] * 50,
                "step": steps + steps,
                "value": loss + acc,
                "timestamp": [1_700_000_000_000 + s for s in steps] * 2,
            },
        }
        c.log_batch(PROJECT, run.id, body)
        c.end_run(PROJECT, run.id)
        ids.append(run.id)
    return ids


def _registry(c: Client) -> None:
    for value in (1.0, 0.1):
        model, x = _model(value)
        with underlay.start_run(PROJECT, "churn", client=c) as run:
            run.log_model(model, "model", input_example=x[:5])
        c.register_model(PROJECT, "churn", run=run.id, path="model")
    c.update_model(PROJECT, "churn", description=f"predicts churn {EVIL}")
    c.set_alias(PROJECT, "churn", "champion", 1, reason="first good one")
    c.set_alias(PROJECT, "churn", "champion", 2, reason="retrained")


def _data(c: Client, tmp: Path) -> None:
    folder = tmp / "images"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha")
    (folder / "b.txt").write_text("beta")
    c.push_dataset(PROJECT, "images", folder, message="first images")
    import pyarrow as pa

    table = pa.table(
        {
            "id": [1, 2, 3],
            "email": ["ann@example.com", "bob@example.com", "cy@example.com"],
            EVIL: ["x", "y", "z"],
        }
    )
    checks = [{"type": "not_null", "column": "id"}]
    c.write_table(PROJECT, "customers", table, checks=checks)
    c.write_table("other", "secrets", pa.table({"s": ["top-secret-value"]}))


NODE = {
    "name": "node-ui",
    "hostname": "node-ui.example",
    "cpu_count": 8,
    "cpu_milli": 8000,
    "memory_mib": 32768,
    "cpu_utilization": 0.1,
    "rapl_readable": False,
    "accelerators": [],
}


def _serving(server: LiveServer, c: Client) -> None:
    c.heartbeat("node-ui", NODE)  # a node no agent runs on: replica jobs wait, nothing starts
    c.deploy(PROJECT, "churn-api", "churn@1")
    c.start_canary(PROJECT, "churn-api", "churn@2", weight=0.2)
    from underlay.monitoring.models import DriftReportRow

    report = {
        "deployment": "churn-api",
        "state": "drift",
        "flagged": ["x1"],
        "rows": 500,
        "created_at": "2026-01-01T00:00:00+00:00",
        "features": [
            {"name": "x0", "drifted": False, "score": 0.02, "threshold": 0.1, "method": "psi"},
            {
                "name": "x1",
                "drifted": True,
                "score": 0.4,
                "threshold": 0.1,
                "method": "psi",
                "histogram": {
                    "labels": ["<0.5", EVIL],
                    "reference": [0.5, 0.5],
                    "current": [0.1, 0.9],
                },
            },
        ],
    }
    with server.platform.db.session(Scope.everything()) as session:
        from underlay.identity import SYSTEM, read_project

        project = read_project(session, PROJECT, SYSTEM)
        row = DriftReportRow(
            project_id=project.id,
            deployment="churn-api",
            reference="customers@1",
            rows=500,
            state="drift",
            flagged='["x1"]',
            report=json.dumps(report),
        )
        session.add(row)


def seed(server: LiveServer, tmp: Path) -> World:
    with server.client() as c:
        c.create_project(PROJECT)
        c.create_project("other")
        for user, project, role in USERS:
            c.create_user(user, password=PASSWORD)
            c.add_member(project, user, role)
        c.create_user("loner", password=PASSWORD)  # in no project
        runs = _runs(c)
        other_run = c.create_run("other", "hidden", params={"secret": "x"}).id
        _registry(c)
        _data(c, tmp)
        _serving(server, c)
    tokens = {"admin": ADMIN_TOKEN}
    for user, _project, _role in USERS:
        with Client(server.url, None) as anonymous:
            tokens[user] = anonymous.login(user, PASSWORD).token
    return World(server, runs, other_run, tokens)


def world(tmp: Path, sqlite_template: Path) -> Iterator[World]:
    """A live server with the seeded data, stopped afterwards."""
    settings = Settings(home=tmp / "home", store={"url": sqlite_url(sqlite_template, tmp)})
    settings.compute = ComputeSettings(local_agent=False)
    settings.admin_token = ADMIN_TOKEN
    ensure_home(settings)
    server = LiveServer(settings).start()
    try:
        yield seed(server, tmp)
    finally:
        server.stop()
