"""The retraining loop end to end on a live server: drifted traffic -> drift report -> the
loop retrains (a real pipeline in a real job), evaluates, canaries and promotes; a challenger
that does not win; a failing pipeline; a restart in the middle; bad input.

The tests share one server and deployment (starting replicas is the slow part) and run in
file order: each one starts from whatever version the earlier ones left serving, and says
what it needs of it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.cli.conftest import clean_env, run_cli
from tests.conftest import ADMIN_TOKEN, sqlite_url
from tests.monitoring.loop_world import NAME, PROJECT, World, job_env, wait_until
from tests.monitoring.marker_model import MARK
from underlay.errors import Conflict, InvalidInput, NotFound
from underlay.lineage import ObjectRef, upstream
from underlay.store import Scope
from underlay.store.models import AuditEntry

LOOP_EVAL_JOB = "underlay.monitoring.loop_eval_job"
pytestmark = [
    pytest.mark.slow,
    # a restarted server leaves its replica and training jobs running for the next one to
    # adopt (as a real restart does): the old process's handles of them are let go running
    pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("loop")
    found = World(tmp, sqlite_url(sqlite_template, tmp))
    try:
        found.setup()
        yield found
    finally:
        with found.client() as c:
            for deployment in c.list_deployments(PROJECT):
                c.delete_deployment(PROJECT, deployment.name)
            for job in c.list_jobs(PROJECT, state=["queued", "admitted", "running"]):
                c.wait_job(PROJECT, job.id, timeout_s=30)
        found.server.stop()


def _cli(world: World, *args: str) -> Any:
    env = clean_env(UNDERLAY_URL=world.server.url, UNDERLAY_TOKEN=ADMIN_TOKEN)
    return run_cli(*args, env=env)


def _audited(world: World, action: str) -> list[AuditEntry]:
    with world.server.platform.db.session(Scope.everything()) as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def test_drifted_traffic_retrains_canaries_and_promotes_by_itself(world: World) -> None:
    with world.client() as c:
        out = _cli(world, "monitor", "loop", "-p", PROJECT, NAME, "--dry-run", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["blocked"].startswith("no retrain policy")
        world.policy(c, mode="auto", margin=0.1, drift_share=0.4)
        # the dry run says what would happen and writes nothing
        out = _cli(world, "monitor", "loop", "-p", PROJECT, NAME, "--dry-run", "--json")
        assert out.returncode == 0, out.stderr
        plan = json.loads(out.stdout)
        assert plan["would_start"] is False and plan["steps"][0]["reason"] == "no drift report yet"
        assert [s["step"] for s in plan["steps"]][:3] == ["trigger", "training", "register"]
        assert c.retrain_runs(PROJECT, NAME) == []

        world.new_data()  # the newest data: the shifted regime, labelled
        world.traffic(c, 80)
        wait_until(lambda: _logged(world, c) >= 80, "the prediction log to hold the traffic")
        check = c.check_drift(PROJECT, NAME, rows=80, min_rows=50)
        assert check["state"] == "drift" and "spend" in check["flagged"]

        # the driver starts a run on the newest report by itself
        run = wait_until(lambda: c.retrain_runs(PROJECT, NAME), "the loop to start a run")[0]
        assert run.trigger["source"] == "drift" and run.trigger["report"] == check["id"]
        assert run.champion_version == 1
        done = world.finish(c, run.id)
        assert done.state == "promoted", done.reason
        states = [s["state"] for s in done.steps]
        assert states == ["triggered", "training", "evaluating", "canary", "promoted"]
        assert done.evaluation["wins"] and done.evaluation["challenger"] > 0.9
        assert done.evaluation["job"] not in (None, done.training_job_id)
        assert done.evaluation["champion"] < 0.7
        challenger = done.challenger_version
        assert challenger == 2
        wait_until(
            lambda: c.read_deployment(PROJECT, NAME).version == challenger, "the rolling update"
        )
        out = _cli(world, "monitor", "runs", "-p", PROJECT, NAME, "--json")
        assert json.loads(out.stdout)[0]["state"] == "promoted"
    # every step audited; lineage: the table version trained the challenger through the run
    assert [e.actor for e in _audited(world, "retrain.promoted")] == ["retrain-loop"]
    for action in ("retrain.training", "retrain.evaluating", "retrain.canary"):
        assert _audited(world, action), action
    with world.server.platform.db.session(Scope.everything()) as session:
        graph = upstream(session, ObjectRef("model_version", f"churn@{challenger}"))
        nodes = {str(n) for n in graph.nodes}
    assert f"retrain_run:{run.id}" in nodes
    assert any(n.startswith("table_version:churn_train@") for n in nodes)


def _logged(world: World, c: Any) -> int:
    from underlay.serving.predlog import predictions_table

    try:
        return int(c.read_table(PROJECT, predictions_table(NAME)).num_rows)
    except NotFound:
        return 0


def test_a_challenger_that_does_not_win_by_the_margin_keeps_the_champion(world: World) -> None:
    with world.client() as c:
        world.policy(c, mode="auto", margin=0.9)  # no tree gains 0.9 accuracy
        champion = c.read_deployment(PROJECT, NAME).version
        world.traffic(c, 40)
        out = _cli(world, "monitor", "loop", "-p", PROJECT, NAME, "--reason", "weekly")
        assert out.returncode == 0, out.stderr
        run = c.retrain_runs(PROJECT, NAME)[0]
        assert run.trigger == {"source": "manual", "reason": "weekly"}
        done = world.finish(c, run.id)
        assert done.state == "rejected"
        assert "does not win" in done.reason and "margin 0.9" in done.reason
        found = c.read_deployment(PROJECT, NAME)
        assert (found.version == champion and found.canary is None) or (
            found.canary is not None and found.canary.version != done.challenger_version
        )


def test_the_evaluation_loads_the_models_in_a_sandboxed_job_never_in_the_server(
    world: World,
) -> None:
    # the challenger is a tree whose deserialisation runs code (as a hostile model's would):
    # it marks which process loaded it, in markers/ and on its stdout
    with world.client() as c:
        world.policy(
            c, "marked", pipeline="marked", pipeline_file="marked.py", mode="auto", margin=0.9,
            env=job_env(with_tests=True),
        )  # fmt: skip
        world.traffic(c, 40)
        run = c.start_retrain(PROJECT, NAME, reason="a model that runs code when loaded")
        done = world.finish(c, run.id)
        assert done.state == "rejected", done.reason
        evaluation = done.evaluation
        assert evaluation["rows"] >= 20 and evaluation["champion"] is not None
        job = c.read_job(PROJECT, evaluation["job"])
        assert job.state == "succeeded" and job.command[1:3] == ["-m", LOOP_EVAL_JOB]
        assert job.id not in (done.training_job_id, None)
        log = b"".join(c.job_logs(PROJECT, job.id)).decode()
        # the slice (a copy of logged traffic) was named in the job's command and is gone now
        assert evaluation["data"] in job.command
        with pytest.raises(NotFound):
            c.read_blob(PROJECT, evaluation["data"])
    loaded_by = [int(line.split()[-1]) for line in log.splitlines() if line.startswith(MARK)]
    assert loaded_by, "the evaluation job did not load the challenger"
    assert os.getpid() not in loaded_by
    # the server (this test's process) never deserialised it
    assert not (world.markers / f"loaded-by-{os.getpid()}").exists()
    steps = [s["state"] for s in done.steps]
    assert steps == ["triggered", "training", "evaluating", "rejected"]
    assert done.steps[-1]["job"] == job.id


def test_a_failing_training_pipeline_keeps_the_champion_and_alerts(world: World) -> None:
    with world.client() as c:
        world.policy(c, "broken", pipeline="broken", pipeline_file="broken.py", mode="auto")
        champion = c.read_deployment(PROJECT, NAME).version
        versions = len(c.list_model_versions(PROJECT, "churn"))
        run = c.start_retrain(PROJECT, NAME, reason="try the broken one")
        done = world.finish(c, run.id)
        assert done.state == "failed"
        assert f"training job {done.training_job_id} ended failed" in done.reason
        assert "the champion stays" in done.reason
        assert done.challenger_version is None
        assert len(c.list_model_versions(PROJECT, "churn")) == versions  # nothing registered
        assert c.read_deployment(PROJECT, NAME).version == champion
        alerts = [a for a in c.list_alerts(project=PROJECT) if a.kind == "retrain"]
        assert alerts and f"retrain run {run.id}" in alerts[0].message
        assert alerts[0].severity == "error" and alerts[0].source == "retrain"


def test_performance_under_the_floor_fires_the_trigger(world: World) -> None:
    from underlay.monitoring.loop import performance_trigger
    from underlay.monitoring.loop_models import RetrainPolicy
    from underlay.store.models import Project

    with world.client() as c:
        world.traffic(c, 20)  # labelled traffic since the last run
    platform = world.server.platform

    def judged(floor: float) -> dict[str, Any]:
        policy = RetrainPolicy(deployment=NAME, task="classification", min_rows=10)
        policy.metric_floor = floor
        with platform.db.session(Scope.everything()) as session:
            project = session.scalar(select(Project).where(Project.name == PROJECT))
            assert project is not None
            return performance_trigger(session, platform, project, policy)

    fired = wait_until(
        lambda: (r := judged(1.01))["fires"] and r, "the labelled traffic to be logged"
    )
    assert fired["metric"] == "accuracy" and 0.0 <= fired["value"] <= 1.0
    assert "under the policy's floor 1.01" in fired["reason"]
    assert judged(-1.0)["fires"] is False
    with platform.db.session(Scope.everything()) as session:
        project = session.scalar(select(Project).where(Project.name == PROJECT))
        assert project is not None
        policy = RetrainPolicy(deployment=NAME, task="classification", min_rows=10**6)
        policy.metric_floor = 1.01
        too_few = performance_trigger(session, platform, project, policy)
    assert too_few["fires"] is False and "performance:" in too_few["reason"]


def test_a_run_awaiting_approval_survives_a_restart_and_then_promotes(world: World) -> None:
    with world.client() as c:
        # no new data since the champion was trained on the table's newest version: the
        # challenger is the same tree, and with margin 0 a tie wins
        world.policy(c, mode="approval", margin=0.0)
        world.traffic(c, 40)
        run = c.start_retrain(PROJECT, NAME, reason="needs a human")

        def waiting() -> bool:
            found = c.retrain_run(PROJECT, run.id)
            assert not found.terminal, found.reason
            return found.state == "awaiting_approval"

        wait_until(waiting, "the run to wait for approval", within_s=180)
    world.restart()
    with world.client() as c:
        assert c.retrain_run(PROJECT, run.id).state == "awaiting_approval"
        wait_until(lambda: world._serving(c), "the deployment to serve after the restart")
        out = _cli(world, "monitor", "approve", "-p", PROJECT, str(run.id))
        assert out.returncode == 0, out.stderr
        done = world.finish(c, run.id)
        assert done.state == "promoted", done.reason
        assert done.approved_by
        states = [s["state"] for s in done.steps]
        assert states[-3:] == ["awaiting_approval", "canary", "promoted"]


def _wait_state(c: Any, run_id: int, state: str, within_s: float = 180.0) -> Any:
    def reached() -> Any:
        found = c.retrain_run(PROJECT, run_id)
        assert not found.terminal, f"run ended {found.state}: {found.reason}"
        return found if found.state == state else None

    return wait_until(reached, f"retrain run {run_id} to reach {state}", within_s)


def test_a_restart_while_training_resumes_the_run_with_the_same_job(world: World) -> None:
    with world.client() as c:
        world.policy(c, mode="auto", margin=0.0)  # the same data: a tie, which wins at margin 0
        world.traffic(c, 40)
        run = c.start_retrain(PROJECT, NAME, reason="restart while it trains")
        training = _wait_state(c, run.id, "training")
        assert training.training_job_id is not None
    world.restart()
    with world.client() as c:
        done = world.finish(c, run.id)
        assert done.state == "promoted", done.reason
        # the new server followed the job the old one started: none submitted again
        assert done.training_job_id == training.training_job_id
        states = [s["state"] for s in done.steps]
        assert states == ["triggered", "training", "evaluating", "canary", "promoted"]
        retrains = [j for j in c.list_jobs(PROJECT) if j.id == done.training_job_id]
        assert [j.state for j in retrains] == ["succeeded"]


def test_a_canary_rolled_back_during_the_loop_keeps_the_champion(world: World) -> None:
    with world.client() as c:
        wait_until(lambda: world._serving(c), "the deployment to serve")
        # a long window: the canary stays undecided until it is rolled back by hand
        world.policy(c, mode="auto", margin=0.0, canary_window_s=600.0)
        champion = c.read_deployment(PROJECT, NAME).target_version  # the last run's promotion
        wait_until(
            lambda: c.read_deployment(PROJECT, NAME).version == champion, "the rolling update"
        )
        world.traffic(c, 40)
        run = c.start_retrain(PROJECT, NAME, reason="a canary nobody trusts")
        in_canary = _wait_state(c, run.id, "canary")
        assert c.read_deployment(PROJECT, NAME).canary.version == in_canary.challenger_version
        c.rollback_canary(PROJECT, NAME, reason="the on-call engineer distrusts it")
        done = world.finish(c, run.id)
        assert done.state == "rolled_back", done.reason
        assert "the on-call engineer distrusts it" in done.reason
        assert "the champion stays" in done.reason
        found = c.read_deployment(PROJECT, NAME)
        assert found.version == champion and found.target_version == champion
        assert found.canary is not None and found.canary.state == "rolled_back"
        assert found.canary.weight == 0.0  # no traffic goes to the challenger any more
    assert _audited(world, "retrain.rolled_back")


def test_bad_input_is_refused_and_writes_nothing(world: World) -> None:
    with world.client() as c:
        world.policy(c)
        before = c.retrain_policy(PROJECT, NAME)
        # an unknown pipeline: the CLI checks the file first, one line, nothing uploaded
        path = world.tmp / "train" / "train.py"
        out = _cli(
            world, "monitor", "policy", "set", "-p", PROJECT, NAME,
            "--pipeline-file", str(path), "--pipeline", "nope",
        )  # fmt: skip
        assert out.returncode != 0 and "declares no pipeline 'nope'" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        out = _cli(
            world, "monitor", "policy", "set", "-p", PROJECT, NAME,
            "--pipeline-file", str(path), "--margin", "-1",
        )  # fmt: skip
        assert out.returncode != 0 and "margin" in out.stderr
        url = f"{world.server.url}/api/v1/projects/{PROJECT}/deployments/{NAME}/retrain-policy"
        body = before.model_dump(mode="json", include=set(type(before).model_fields))
        for key in ("deployment", "updated_by", "updated_at"):
            body.pop(key)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for bad in (
            {"margin": "lots"},
            {"margin": 1e9},
            {"pipeline_file": "missing.py"},
            {"workdir_digest": "0" * 64},
            {"table": "no_such_table"},
        ):
            answer = httpx.put(url, json={**body, **bad}, headers=headers)
            assert 400 <= answer.status_code < 500, (bad, answer.text)
            assert answer.headers["content-type"].startswith("application/problem+json")
        assert c.retrain_policy(PROJECT, NAME) == before
        with pytest.raises(NotFound, match="no retrain policy"):
            c.retrain_policy(PROJECT, "no-such-deployment")
        with pytest.raises(InvalidInput, match="does not cross the policy"):
            c.start_retrain(PROJECT, NAME, drift={"state": "ok", "flagged": [], "features": []})
        run = c.start_retrain(PROJECT, NAME, reason="to be abandoned")
        assert c.abandon_retrain(PROJECT, run.id).state == "abandoned"
        with pytest.raises(Conflict, match="has ended already"):
            c.abandon_retrain(PROJECT, run.id)
        with pytest.raises(Conflict, match="not awaiting approval"):
            c.approve_retrain(PROJECT, run.id)
        runs = len(c.retrain_runs(PROJECT, NAME))
        c.create_project("other")
        with pytest.raises(NotFound):
            c.retrain_run("other", run.id)
        assert len(c.retrain_runs(PROJECT, NAME)) == runs
