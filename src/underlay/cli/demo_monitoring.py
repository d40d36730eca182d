"""The demo's monitoring step: a deployment's traffic shifts, a drift check flags it and
raises an alert, and the retraining loop retrains (a real pipeline as a job), evaluates the
challenger on labelled traffic, canaries it and promotes it, printed step by step.

A small model of its own (``loyalty``: a decision tree on named inputs ``spend`` and
``visits``) keeps the step quick: one replica, a one-second canary window. The deployment
stays, for the dashboard's pages; its replica stops with the demo's server.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from underlay.cli.demo import DemoContext
    from underlay.client import Client

PROJECT = "vision"
NAME = "loyalty-api"
TABLE = "loyalty_train"
ROWS = 400  # shifted rows sent: enough that only the shifted column drifts

PIPELINE = '''
"""Retrain the loyalty model on the table version the loop passes as ``table``."""
from underlay.ml.pipelines import pipeline, step


@step(cache=False, memory="2Gi")
def train(table: str) -> int:
    import numpy as np
    from sklearn.tree import DecisionTreeClassifier

    import underlay
    from underlay.client import Client

    name, _, version = table.partition("@")
    with Client.from_env() as c:
        data = c.read_table("vision", name, version=int(version))
        x = np.column_stack([data.column("spend").to_numpy(), data.column("visits").to_numpy()])
        model = DecisionTreeClassifier(max_depth=3, random_state=0)
        model.fit(x, data.column("label").to_numpy())
        inputs = [{"kind": "table", "name": name, "version": int(version)}]
        with underlay.start_run("vision", "loyalty", client=c, inputs=inputs) as run:
            run.log_model(model, "model", input_example={"spend": x[:5, 0], "visits": x[:5, 1]})
    return run.id


@pipeline
def retrain(table: str = ""):
    train(table)
'''


def _regime(seed: int, n: int, shifted: bool) -> pa.Table:
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    low = 100.0 if shifted else 0.0
    spend = rng.uniform(low, low + 100.0, n)
    visits = rng.uniform(0.0, 10.0, n)
    return pa.table({"spend": spend, "visits": visits, "label": (spend > low + 50).astype(int)})


def _wait(check: Any, what: str, within_s: float) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {within_s:g} s for {what}")
        time.sleep(0.2)


def _deploy(ctx: DemoContext, alice: Client) -> None:
    import numpy as np
    from sklearn.tree import DecisionTreeClassifier

    from underlay.client.tracking import start_run

    table = _regime(1, 400, shifted=False)
    written = alice.write_table(PROJECT, TABLE, table)
    x = np.column_stack([table.column("spend"), table.column("visits")])
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, table.column("label"))
    inputs = [{"kind": "table", "name": TABLE, "version": written.version}]
    with start_run(
        PROJECT, "loyalty", client=alice, inputs=inputs, record_environment=False
    ) as run:
        run.log_model(model, "model", input_example={"spend": x[:5, 0], "visits": x[:5, 1]})
    alice.register_model(PROJECT, "loyalty", run=run.id, path="model")
    alice.deploy(PROJECT, NAME, "loyalty@1", replicas=1, cpus=0.5, log_sample_rate=1.0)

    def serving() -> bool:
        found = alice.read_deployment(PROJECT, NAME)
        return found.state == "ready" and any(r.state == "ready" for r in found.replicas)

    _wait(serving, "the loyalty replica to be ready", 120)
    ctx.say(
        f"loyalty@1 (a tree on spend, visits; trained on {TABLE}@{written.version}) serves {NAME}"
    )


def _traffic(alice: Client, seed: int, n: int, labels: bool = True, per: int = 1) -> None:
    """``n`` rows of shifted traffic in requests of ``per`` rows, labelled as feedback."""
    rows = _regime(seed, n, shifted=True).to_pylist()
    sent: list[dict[str, Any]] = []
    for start in range(0, n, per):
        chunk = rows[start : start + per]
        records = [{"spend": r["spend"], "visits": r["visits"]} for r in chunk]
        answer = alice.predict(PROJECT, NAME, records)
        sent.extend(
            {"request_id": answer["request_id"], "row": i, "label": r["label"]}
            for i, r in enumerate(chunk)
        )
    if labels:
        alice.send_feedback(PROJECT, NAME, sent)


def _drift(ctx: DemoContext, alice: Client) -> dict[str, Any]:
    from underlay.errors import NotFound
    from underlay.serving.predlog import predictions_table

    written = alice.write_table(PROJECT, TABLE, _regime(2, 400, shifted=True), mode="overwrite")
    ctx.say(f"new labelled data: {TABLE}@{written.version} (customers now spend 100 to 200)")
    _traffic(alice, 3, ROWS, per=10)

    def logged() -> bool:
        with contextlib.suppress(NotFound):
            return bool(alice.read_table(PROJECT, predictions_table(NAME)).num_rows >= ROWS)
        return False

    _wait(logged, "the prediction log", 30)
    check = alice.check_drift(PROJECT, NAME, rows=ROWS, min_rows=100)
    scores = ", ".join(
        f"{f['name']} {f.get('score', 0):.2f}{' DRIFT' if f['drifted'] else ''}"
        for f in check["features"]
    )
    ctx.say(f"{ROWS} rows of shifted traffic, labelled; drift check {check['id']}: {scores}")
    alerts = [a for a in alice.list_alerts(project=PROJECT) if a.kind == "drift"]
    for alert in alerts[:1]:
        ctx.say(f"alert {alert.kind}: {alert.message}")
    return check


def _loop(ctx: DemoContext, alice: Client) -> None:
    from underlay.cli.compute import _upload_workdir

    folder = ctx.home / "loyalty-retrain"
    folder.mkdir(exist_ok=True)
    (folder / "train.py").write_text(PIPELINE, encoding="utf-8")
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    digest = _upload_workdir(alice, PROJECT, folder, 100.0, True)
    alice.set_retrain_policy(
        PROJECT, NAME, pipeline="retrain", pipeline_file="train.py", workdir_digest=digest,
        margin=0.05, drift_share=0.4, holdout_share=0.5, min_rows=20, canary_weight=0.5,
        canary_window_s=1.0, canary_min_requests=10, cooldown_s=0.0, env=env, mode="auto",
    )  # fmt: skip
    ctx.say("retrain policy: mode auto, drift share 0.4, margin 0.05, canary 50% for 1 s")
    _drift(ctx, alice)
    run = _wait(lambda: alice.retrain_runs(PROJECT, NAME), "the loop to start a run", 30)[0]
    ctx.say(f"retrain run {run.id} triggered by itself: {run.trigger.get('reason', '')}")

    def ended() -> Any:
        found = alice.retrain_run(PROJECT, run.id)
        if found.state == "canary":
            _traffic(alice, int(time.monotonic() * 1000) % 10_000, 10, labels=False, per=2)
        return found if found.terminal else None

    done = _wait(ended, f"retrain run {run.id} to end", 240)
    for step in done.steps:
        ctx.say(f"  {step['at'][11:19]} {step['state']:<11} {step.get('detail', '')}")
    if done.state != "promoted":
        raise AssertionError(f"retrain run {done.id} ended {done.state}: {done.reason}")
    found = alice.read_deployment(PROJECT, NAME)
    ctx.say(
        f"{NAME}: rolling to loyalty@{found.target_version} (its canary replica is reused); "
        f"audited: {len(ctx.admin.list_audit(action='retrain.promoted'))} retrain.promoted"
    )


def retrain_loop(ctx: DemoContext) -> None:
    """Deploy, shift the traffic, and let the loop retrain, canary and promote."""
    alice: Client = ctx.state["alice"]
    started = time.monotonic()
    try:
        _deploy(ctx, alice)
        _loop(ctx, alice)
    except BaseException:
        with contextlib.suppress(Exception):
            alice.delete_deployment(PROJECT, NAME)
            live = ["queued", "admitted", "running"]
            _wait(lambda: not alice.list_jobs(PROJECT, state=live), "the replicas to exit", 60)
        raise
    # it stays deployed, for the dashboard (its replicas stop with the server)
    ctx.say(f"the loop step took {time.monotonic() - started:.1f} s")
