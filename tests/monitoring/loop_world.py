"""A live server with a deployment whose traffic drifts, for the retraining loop's tests.

``churn`` version 1 (a depth-3 decision tree) is trained on table ``churn_train`` version 1
(``spend`` uniform in [0, 100], ``visits`` in [0, 10], ``label`` = spend > 50) and deployed
as ``churn-api`` with every request logged. :func:`shifted` is the drifted traffic: spend in
[100, 200] and label = spend > 150, on which version 1 scores 0.5 and a tree trained on that
regime (table version 2, written by :meth:`World.new_data`) nearly 1.

The training pipeline (:data:`PIPELINE`) reads the table version the loop passes as
``table``, fits the same kind of tree and logs it under ``model``; :data:`FAILING` raises;
:data:`MARKED` fits a :class:`~tests.monitoring.marker_model.MarkedTree`, which leaves a mark
in ``markers/`` (and on stdout) naming the process that deserialises it.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

import underlay
from tests.conftest import ADMIN_TOKEN, free_port
from underlay.client import Client
from underlay.config import ComputeSettings, Settings, ensure_home

T = TypeVar("T")
PROJECT = "shop"
NAME = "churn-api"
SRC = Path(underlay.__file__).resolve().parents[1]

PIPELINE = """
from underlay.ml.pipelines import pipeline, step


@step(cache=False)
def train(table: str) -> int:
    import numpy as np
    from sklearn.tree import DecisionTreeClassifier

    import underlay
    from underlay.client import Client

    name, _, version = table.partition("@")
    with Client.from_env() as c:
        data = c.read_table("shop", name, version=int(version))
        x = np.column_stack([data.column("spend").to_numpy(), data.column("visits").to_numpy()])
        y = data.column("label").to_numpy()
        model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y)
        inputs = [{"kind": "table", "name": name, "version": int(version)}]
        with underlay.start_run("shop", "retrain", client=c, inputs=inputs) as run:
            example = {"spend": x[:5, 0], "visits": x[:5, 1]}
            run.log_model(model, "model", input_example=example)
    return run.id


@pipeline
def retrain(table: str = ""):
    train(table)
"""

FAILING = """
from underlay.ml.pipelines import pipeline, step


@step(cache=False)
def train(table: str) -> int:
    raise RuntimeError("the training data is unreadable today")


@pipeline
def broken(table: str = ""):
    train(table)
"""


MARKED = (
    PIPELINE.replace(
        "from sklearn.tree import DecisionTreeClassifier",
        "from tests.monitoring.marker_model import MarkedTree",
    )
    .replace("DecisionTreeClassifier(max_depth=3, random_state=0)", "MarkedTree(MARKERS)")
    .replace("def retrain(", "def marked(")
)


def wait_until(check: Callable[[], T | None], what: str, within_s: float = 90.0) -> T:
    deadline = time.monotonic() + within_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def regime(rng: np.random.Generator, n: int, shifted: bool) -> pa.Table:
    low = 100.0 if shifted else 0.0
    spend = rng.uniform(low, low + 100.0, n)
    visits = rng.uniform(0.0, 10.0, n)
    label = (spend > low + 50.0).astype(np.int64)
    return pa.table({"spend": spend, "visits": visits, "label": label})


def job_env(*, with_tests: bool = False) -> dict[str, str]:
    """What a node would have installed: this checkout's ``underlay`` on the jobs' PATH (and
    its ``tests`` package on their path, for a model class of the tests')."""
    bin_dir = Path(sys.executable).parent
    path = f"{SRC}:{SRC.parent}" if with_tests else str(SRC)
    return {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "PYTHONPATH": path}


class World:
    """The live server (restartable on the same port and home) and the deployment."""

    def __init__(self, tmp: Path, database_url: str) -> None:
        self.tmp = tmp
        self.rng = np.random.default_rng(7)
        self.ids = itertools.count()
        self.markers = tmp / "markers"
        self.settings = Settings(home=tmp / "home", store={"url": database_url})
        self.settings.compute = ComputeSettings(
            node_name="node-1", loop_interval_s=0.1, heartbeat_interval_s=0.2, grace_s=5.0
        )
        self.settings.admin_token = ADMIN_TOKEN
        ensure_home(self.settings)
        self.port = free_port()
        self.server = self._start()

    def _start(self) -> Any:
        import pytest

        import tests.conftest as conftest

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(conftest, "free_port", lambda: self.port)  # jobs keep reaching it
            server = conftest.LiveServer(self.settings)
        return server.start()

    def restart(self) -> None:
        self.server.stop()
        self.server = self._start()

    def client(self) -> Client:
        c: Client = self.server.client()
        return c

    def setup(self) -> None:
        from sklearn.tree import DecisionTreeClassifier

        with self.client() as c:
            wait_until(c.list_nodes, "the local agent to register", within_s=30)
            c.create_project(PROJECT)
            table = regime(self.rng, 400, shifted=False)
            written = c.write_table(PROJECT, "churn_train", table)
            x = np.column_stack([table.column("spend"), table.column("visits")])
            model = DecisionTreeClassifier(max_depth=3, random_state=0)
            model.fit(x, table.column("label").to_numpy())
            inputs = [{"kind": "table", "name": "churn_train", "version": written.version}]
            with underlay.start_run(PROJECT, "churn", client=c, inputs=inputs) as run:
                example = {"spend": x[:5, 0], "visits": x[:5, 1]}
                run.log_model(model, "model", input_example=example)
            c.register_model(PROJECT, "churn", run=run.id, path="model")
            c.deploy(PROJECT, NAME, "churn@1", replicas=1, cpus=0.5, log_sample_rate=1.0)
            wait_until(lambda: self._serving(c), "the deployment to serve", within_s=120)
        self.markers.mkdir()
        marked = f"MARKERS = {str(self.markers)!r}\n{MARKED}"
        for name, text in (("train.py", PIPELINE), ("broken.py", FAILING), ("marked.py", marked)):
            folder = self.tmp / name.removesuffix(".py")
            folder.mkdir()
            (folder / name).write_text(text, encoding="utf-8")

    def _serving(self, c: Client) -> bool:
        found = c.read_deployment(PROJECT, NAME)
        return found.state == "ready" and any(r.state == "ready" for r in found.replicas)

    def new_data(self) -> int:
        """Table version 2: the shifted regime only."""
        with self.client() as c:
            written = c.write_table(
                PROJECT, "churn_train", regime(self.rng, 400, shifted=True), mode="overwrite"
            )
        return int(written.version)

    def traffic(self, c: Client, n: int, *, labels: bool = True) -> None:
        """``n`` one-row requests of the shifted regime, each labelled as feedback."""
        rows = regime(self.rng, n, shifted=True).to_pylist()
        sent = []
        for row in rows:
            rid = f"request-{next(self.ids):06d}"
            record = {"spend": row["spend"], "visits": row["visits"]}
            answer = c.predict(PROJECT, NAME, [record], request_id=rid)
            sent.append({"request_id": answer["request_id"], "label": row["label"]})
        if labels:
            c.send_feedback(PROJECT, NAME, sent)

    def policy(self, c: Client, folder: str = "train", **changes: Any) -> Any:
        from underlay.cli.compute import _upload_workdir

        digest = _upload_workdir(c, PROJECT, self.tmp / folder, 100.0, True)
        body: dict[str, Any] = {
            "pipeline": "retrain",
            "pipeline_file": "train.py",
            "workdir_digest": digest,
            "holdout_share": 0.5,
            "min_rows": 20,
            "canary_weight": 0.5,
            "canary_window_s": 1.0,
            "canary_min_requests": 10,
            "cooldown_s": 0.0,
            "env": job_env(),
            **changes,
        }
        return c.set_retrain_policy(PROJECT, NAME, **body)

    def finish(self, c: Client, run_id: int, within_s: float = 180.0) -> Any:
        """Send traffic until run ``run_id`` ends (a canary needs requests to be judged)."""

        def ended() -> Any:
            run = c.retrain_run(PROJECT, run_id)
            if run.terminal:
                return run
            if run.state == "canary":
                self.traffic(c, 5, labels=False)
            return None

        return wait_until(ended, f"retrain run {run_id} to end", within_s)
