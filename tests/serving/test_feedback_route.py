"""The feedback route end to end on a real server: a deployed model's prediction lands in the
deployment's prediction log table and the label sent for it in its feedback table, and the
two join; refusals (another project, unknown deployment, malformed labels) are 4xx."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import clean_env, run_cli
from tests.cli.test_cli import assert_one_line_error
from tests.conftest import LiveServer
from tests.serving.conftest import PROJECT, X, ready, wait_until
from underlay.client import Client
from underlay.data.tables import TableStore
from underlay.errors import InvalidInput, NotFound
from underlay.serving.feedback import joined
from underlay.store import Scope
from underlay.store.models import Project

pytestmark = pytest.mark.slow


def _rows(admin: Client, table: str, request_id: str) -> list[dict[str, Any]]:
    try:
        rows = admin.read_table(PROJECT, table).to_pylist()
    except NotFound:  # not written yet (or its first write is under way)
        return []
    return [r for r in rows if r["request_id"] == request_id]


def test_a_prediction_and_its_feedback_land_in_the_tables_and_join(
    live: LiveServer, admin: Client
) -> None:
    admin.deploy(PROJECT, "churn-fb", "churn@champion", log_sample_rate=1.0)
    ready(admin, "churn-fb", 1)
    answer = admin.predict(PROJECT, "churn-fb", X[:2].tolist(), request_id="req-fb-1")
    logged = wait_until(
        lambda: _rows(admin, "churn-fb_predictions", "req-fb-1"), "the prediction log rows"
    )
    assert [(r["row"], r["model_version"], r["arm"]) for r in logged] == [
        (0, 1, "stable"),
        (1, 1, "stable"),
    ]
    stored = admin.send_feedback(
        PROJECT,
        "churn-fb",
        [
            {"request_id": "req-fb-1", "label": answer["predictions"][0]},
            {"request_id": "req-fb-1", "label": 1 - answer["predictions"][1], "row": 1},
            {"request_id": "never-served", "label": 0},
        ],
    )
    assert stored.table == "churn-fb_feedback"
    assert (stored.accepted, stored.unlogged) == (3, 1)
    labels = admin.read_table(PROJECT, "churn-fb_feedback").to_pylist()
    assert sorted((r["request_id"], r["row"], r["logged"]) for r in labels) == [
        ("never-served", 0, False),
        ("req-fb-1", 0, True),
        ("req-fb-1", 1, True),
    ]
    with live.platform.db.session(Scope.everything()) as session:
        project = session.query(Project).filter_by(name=PROJECT).one()
        rows = joined(session, TableStore(live.settings), project.id, "churn-fb").to_pylist()
    assert [(r["request_id"], r["row"], r["label_value"]) for r in rows] == [
        ("req-fb-1", 0, float(answer["predictions"][0])),
        ("req-fb-1", 1, float(1 - answer["predictions"][1])),
    ]
    admin.delete_deployment(PROJECT, "churn-fb")


def test_feedback_through_the_cli(live: LiveServer, admin: Client, tmp_path: Path) -> None:
    admin.deploy(PROJECT, "churn-fb-cli", "churn@champion")
    env = clean_env(
        UNDERLAY_URL=live.url, UNDERLAY_TOKEN=live.admin_token, UNDERLAY_HOME=str(tmp_path)
    )
    command = ("deployments", "feedback", "-p", PROJECT, "churn-fb-cli", "--labels")
    done = run_cli(*command, '[{"request_id": "r-1", "label": 1}]', env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "1 labels stored in churn-fb-cli_feedback@0 (1 for requests not in the log)"
    )
    as_json = run_cli(*command, '[{"request_id": "r-1", "label": 0}]', "--json", env=env)
    assert json.loads(as_json.stdout)["version"] == 1
    assert_one_line_error(run_cli(*command, "[{", env=env), "--labels is not JSON")
    assert_one_line_error(run_cli(*command, '{"a": 1}', env=env), "--labels must be a list")
    admin.delete_deployment(PROJECT, "churn-fb-cli")


def test_feedback_refusals(live: LiveServer, admin: Client) -> None:
    admin.deploy(PROJECT, "churn-fb-refuse", "churn@champion")
    with pytest.raises(NotFound, match="deployment 'nope' not found"):
        admin.send_feedback(PROJECT, "nope", [{"request_id": "r", "label": 1}])
    for labels, message in (
        ([], "labels"),
        ([{"request_id": "r"}], "label"),
        ([{"request_id": "r", "label": None}], "label is missing"),
        ([{"request_id": "", "label": 1}], "request_id"),
        ([{"request_id": "r", "label": 1, "row": -1}], "row"),
        ([{"request_id": "r", "label": 1, "extra": 2}], "extra"),
    ):
        with pytest.raises(InvalidInput, match=message):
            admin.send_feedback(PROJECT, "churn-fb-refuse", labels)
    assert "churn-fb-refuse_feedback" not in {t.name for t in admin.list_tables(PROJECT)}
    admin.create_user("fb-bob", password="a-long-password-1")
    admin.add_member("other", "fb-bob")
    token = admin.create_token("fb-bob", user="fb-bob").token
    with Client(live.url, token) as bob:
        with pytest.raises(NotFound):
            bob.send_feedback(PROJECT, "churn-fb-refuse", [{"request_id": "r", "label": 1}])
        with pytest.raises(NotFound):
            bob.send_feedback("other", "churn-fb-refuse", [{"request_id": "r", "label": 1}])
    admin.delete_deployment(PROJECT, "churn-fb-refuse")
