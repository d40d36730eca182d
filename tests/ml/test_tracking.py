"""Experiment tracking through the real server, on SQLite and PostgreSQL: runs and their
state machine, the SDK's start_run, artifacts, and project scope."""

from __future__ import annotations

from pathlib import Path

import pytest

import underlay
from tests.conftest import LiveServer
from underlay.client import Client
from underlay.errors import Conflict, InvalidInput, NotFound


@pytest.fixture
def project(admin: Client) -> str:
    admin.create_project("p")
    return "p"


def test_start_run_logs_params_metrics_tags_and_ends_finished(
    server: LiveServer, admin: Client, project: str
) -> None:
    with underlay.start_run(project=project, experiment="churn", client=admin) as run:
        run.log_params({"lr": 0.01, "depth": 3})
        run.set_tags({"team": "ml"})
        for i in range(100):
            run.log(step=i, loss=1.0 / (i + 1), acc=i / 100)
    info = admin.read_run(project, run.id)
    assert info.status == "finished" and info.experiment == "churn"
    assert info.params == {"depth": "3", "lr": "0.01"}
    assert info.tags == {"team": "ml"}
    assert info.metrics["acc"].step == 99 and info.metrics["acc"].value == pytest.approx(0.99)
    history = admin.metric_history(project, run.id, "loss")
    assert history.step == list(range(100)) and history.value[0] == 1.0
    assert [e.name for e in admin.list_experiments(project)] == ["churn"]
    assert [r.id for r in admin.list_runs(project, experiment="churn")] == [run.id]


def test_a_failing_block_ends_the_run_failed(admin: Client, project: str) -> None:
    with pytest.raises(RuntimeError), underlay.start_run(project, "e", client=admin) as run:
        run.log(step=0, loss=1.0)
        raise RuntimeError("boom")
    info = admin.read_run(project, run.id)
    assert info.status == "failed" and "boom" in info.error
    assert info.metrics["loss"].value == 1.0


def test_status_is_a_state_machine(admin: Client, project: str) -> None:
    run = admin.create_run(project, "e")
    assert admin.end_run(project, run.id, "killed").status == "killed"
    assert admin.end_run(project, run.id, "killed").status == "killed"  # a retry: no-op
    with pytest.raises(Conflict, match="is killed and cannot become finished"):
        admin.end_run(project, run.id, "finished")
    body = {
        "batch_id": "b" * 16,
        "metrics": {"keys": ["x"], "key": [0], "step": [0], "value": [1.0], "timestamp": [0]},
    }
    with pytest.raises(Conflict, match="nothing more can be logged"):
        admin.log_batch(project, run.id, body)


def test_artifacts_upload_list_download_and_delete(
    admin: Client, project: str, tmp_path: Path
) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights" * 1000)
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "out" / "a.txt").write_text("a")
    (tmp_path / "out" / "sub" / "b.txt").write_text("b")
    with underlay.start_run(project, "e", client=admin) as run:
        art = run.log_artifact(tmp_path / "model.bin")
        run.log_artifacts(tmp_path / "out", "reports")
    assert art.path == "model.bin" and art.size == 7000
    paths = [a.path for a in admin.list_artifacts(project, run.id)]
    assert paths == ["model.bin", "reports/a.txt", "reports/sub/b.txt"]
    assert admin.download_artifact(project, run.id, "reports/sub/b.txt") == b"b"
    assert admin.download_artifact(project, run.id, "model.bin") == b"weights" * 1000
    admin.delete_run(project, run.id)
    with pytest.raises(NotFound):
        admin.read_run(project, run.id)
    with pytest.raises(NotFound):
        admin.read_blob(project, art.digest)  # nothing else held it: removed


def test_another_projects_runs_answer_404(server: LiveServer, admin: Client) -> None:
    admin.create_project("a")
    admin.create_project("b")
    admin.create_user("bob", password="a-long-password-1")
    admin.add_member("b", "bob")
    run = admin.create_run("a", "e")
    token = admin.create_token("bob", user="bob").token
    with Client(server.url, token) as bob:
        with pytest.raises(NotFound):
            bob.read_run("a", run.id)
        with pytest.raises(NotFound):
            bob.read_run("b", run.id)  # a project bob is in, another project's run id
        with pytest.raises(NotFound):
            bob.metric_history("b", run.id, "x")
        with pytest.raises(NotFound):
            bob.list_artifacts("b", run.id)
        assert bob.list_runs("b") == []


def test_bad_names_are_refused(admin: Client, project: str) -> None:
    with pytest.raises(InvalidInput):
        admin.create_run(project, "Bad Name")
