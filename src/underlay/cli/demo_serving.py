"""The demo's serving steps: deploy the champion, predict through JSON and the Open Inference
Protocol (V2), then canary a broken retrain and watch the platform roll it back by itself.

Every wait has a deadline and says what it waited for; the deployment is removed at the end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from underlay.cli.demo import DemoContext
    from underlay.client import Client

T = TypeVar("T")
PROJECT = "vision"
NAME = "churn-api"
ROWS = [[120.0, 3.0], [480.0, 25.0], [30.0, 1.0], [300.0, 18.0]]  # spend, visits


def _wait(ctx: DemoContext, check: Callable[[], T | None], what: str, within_s: float) -> T:
    """Poll ``check`` until it returns something; past ``within_s``, fail naming ``what`` and
    the deployment's last events."""
    deadline = time.monotonic() + within_s
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            alice: Client = ctx.state["alice"]
            events = [f"{e.kind}: {e.reason}" for e in alice.deployment_events(PROJECT, NAME)]
            raise RuntimeError(
                f"waited {within_s:g} s for {what}; last events: {events[-5:]}; "
                f"see {ctx.home / 'server.log'}"
            )
        time.sleep(0.2)


def _ready(alice: Client) -> Any:
    found = alice.read_deployment(PROJECT, NAME)
    serving = [r for r in found.replicas if r.arm == "stable" and r.state == "ready"]
    return found if found.state == "ready" and serving else None


def deploy_and_predict(ctx: DemoContext) -> None:
    """Deploy churn@champion on one replica and predict through JSON and V2."""
    try:
        _deploy_and_predict(ctx)
    except BaseException:
        with contextlib.suppress(Exception):
            ctx.state["alice"].delete_deployment(PROJECT, NAME)
        raise


def _deploy_and_predict(ctx: DemoContext) -> None:
    import httpx
    import numpy as np

    alice: Client = ctx.state["alice"]
    started = time.monotonic()
    deployed = alice.deploy(
        PROJECT, NAME, "churn@champion", replicas=1, cpus=0.5, reason="serve the champion"
    )
    ctx.say(f"deployed churn@champion (version {deployed.version}, signature and files verified)")
    found = _wait(ctx, lambda: _ready(alice), "the replica to be ready", within_s=120)
    replica = found.replicas[0]
    ctx.say(
        f"replica {replica.slot} ready in {time.monotonic() - started:.1f} s as sandboxed job "
        f"{replica.job_id}; endpoint {ctx.url}{found.endpoint}"
    )
    expected = ctx.state["churn_model"].predict(np.asarray(ROWS, np.float32)).tolist()
    answer = alice.predict(PROJECT, NAME, ROWS)
    ctx.say(
        f"JSON predict (as `underlay predict`): {len(ROWS)} records -> {answer['predictions']} "
        f"from churn@{answer['model_version']}"
    )
    base = f"{ctx.url}/api/v1/projects/{PROJECT}/deployments/{NAME}/v2"
    headers = {"Authorization": f"Bearer {ctx.state['alice_token']}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as v2:
        meta = v2.get(f"/models/{NAME}").raise_for_status().json()
        (tensor,) = meta["inputs"]
        body = {
            "inputs": [
                {
                    "name": tensor["name"],
                    "shape": [len(ROWS), len(ROWS[0])],
                    "datatype": tensor["datatype"],
                    "data": [value for row in ROWS for value in row],
                }
            ]
        }
        result = v2.post(f"/models/{NAME}/infer", json=body).raise_for_status().json()
    output = result["outputs"][0]
    ctx.say(
        f"Open Inference Protocol (KServe V2, as tritonclient speaks it): POST "
        f".../v2/models/{NAME}/infer with {tensor['name']} {tensor['datatype']}"
        f"{body['inputs'][0]['shape']} -> {output['name']} {output['data']}"
    )
    if answer["predictions"] != expected or output["data"] != expected:
        raise AssertionError(f"served predictions differ from the model's {expected}")
    ctx.say("both agree with the registered model's own predictions")


def _register_broken_retrain(ctx: DemoContext) -> int:
    """A retrain that expects a third feature (a country code) the callers do not send: it is
    signed and verifies, but fails on every request the deployment's signature lets through."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from underlay.client.tracking import start_run

    alice: Client = ctx.state["alice"]
    rng = np.random.default_rng(3)
    features = rng.random((200, 3)).astype(np.float32)
    labels = (features[:, 0] > 0.5).astype(int)
    with start_run(PROJECT, "churn", client=alice, record_environment=False) as run:
        retrain = LogisticRegression().fit(features, labels)
        run.log_model(retrain, "model", input_example=features[:5])
    version: int = alice.register_model(PROJECT, "churn", run=run.id, path="model").version
    ctx.say(
        f"registered churn@{version}, signed: a retrain that expects a third feature (country) "
        "the callers do not send"
    )
    return version


def _broken_canary(ctx: DemoContext) -> None:
    from rich.markup import escape

    from underlay.errors import InvalidInput, Unavailable

    alice: Client = ctx.state["alice"]
    version = _register_broken_retrain(ctx)
    policy = {"weight": 0.5, "min_requests": 10, "max_error_rate": 0.2, "window_s": 300}
    alice.start_canary(PROJECT, NAME, f"churn@{version}", reason="try the retrain", **policy)
    ctx.say(
        f"canary churn@{version} started: {policy['weight']:.0%} of traffic; error-rate limit "
        f"{policy['max_error_rate']:.0%} over at least {policy['min_requests']} requests"
    )

    def canary_state() -> str | None:
        canary = alice.read_deployment(PROJECT, NAME).canary
        return None if canary is None or canary.state == "starting" else canary.state

    _wait(ctx, canary_state, "the canary's replica to be ready", within_s=120)
    answered: dict[int, int] = {}
    failed = 0

    def rolled_back() -> bool | None:
        nonlocal failed
        try:
            got = alice.predict(PROJECT, NAME, ROWS[:2])
            answered[got["model_version"]] = answered.get(got["model_version"], 0) + 1
        except InvalidInput:  # 400 "the model failed on this input": the canary's answer
            failed += 1
        except Unavailable:  # a 503 while replicas change: the client may retry; so do we
            pass
        kinds = [e.kind for e in alice.deployment_events(PROJECT, NAME)]
        return True if "rollback" in kinds else None

    _wait(ctx, rolled_back, "the automatic rollback", within_s=90)
    sent = sum(answered.values()) + failed
    ctx.say(
        f"sent {sent} requests: {answered.get(1, 0)} answered by churn@1, {failed} failed on "
        f"churn@{version} (400: the model failed on this input)"
    )
    ctx.say("deployment events:")
    for event in alice.deployment_events(PROJECT, NAME):
        line = f"  {event.at:%H:%M:%S} {event.kind:<15} by {event.actor:<14} {event.reason}"
        ctx.say(escape(line))
    found = alice.read_deployment(PROJECT, NAME)
    after = {alice.predict(PROJECT, NAME, ROWS[:2])["model_version"] for _ in range(20)}
    traffic = ", ".join(f"{t.arm} churn@{t.version} {t.weight:.0%}" for t in found.traffic)
    state = found.canary.state if found.canary else "none"
    served = ", ".join(f"churn@{v}" for v in sorted(after))
    ctx.say(f"canary {state}; traffic: {traffic}; the next 20 requests all answered by {served}")
    audited = [(a.actor, a.outcome) for a in ctx.admin.list_audit(action="deployment.rollback")]
    ctx.say(f"audit: deployment.rollback by {', '.join(f'{a} ({o})' for a, o in audited)}")
    if state != "rolled_back" or after != {1} or not audited:
        raise AssertionError("the broken canary was not rolled back")


def _remove(ctx: DemoContext) -> None:
    alice: Client = ctx.state["alice"]
    live = ["queued", "admitted", "running"]
    alice.delete_deployment(PROJECT, NAME)

    def ended() -> bool | None:  # the project's only jobs now are the replicas
        return True if not alice.list_jobs(PROJECT, state=live) else None

    _wait(ctx, ended, "the replicas to drain and exit", within_s=60)
    ctx.say(f"deployment {NAME} removed; its replica jobs drained and ended, none left running")


def canary_and_cleanup(ctx: DemoContext) -> None:
    """Canary a broken retrain, watch it rolled back by itself, then remove the deployment."""
    try:
        _broken_canary(ctx)
    finally:
        _remove(ctx)
