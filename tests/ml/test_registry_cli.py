"""``underlay models`` as a user runs it: child processes against a live server (SQLite; the
backends are covered by the API tests)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
import pytest

import underlay
from tests.cli.test_cli import Cli, as_json, assert_one_line_error
from tests.conftest import LiveServer


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'underlay.db'}"


def _logged_run(server: LiveServer) -> int:
    from sklearn.tree import DecisionTreeClassifier

    x = np.random.RandomState(2).rand(30, 3)
    model = DecisionTreeClassifier(max_depth=2).fit(x, (x[:, 0] > 0.5).astype(int))
    with server.client() as admin:
        admin.create_project("p")
        with underlay.start_run("p", "churn", client=admin) as run:
            run.log(step=0, accuracy=0.9)
            run.log_model(model, "model", input_example=x[:4])
    return run.id


def test_register_alias_history_card_and_listings(server: LiveServer, cli: Cli) -> None:
    run = _logged_run(server)
    first = cli("models", "register", "-p", "p", "churn", "--run", str(run), "--path", "model")
    assert first.stdout.strip() == "1"
    second = cli("models", "register", "-p", "p", "churn", "--run", str(run), "--path", "model/")
    assert second.stdout.strip() == "2"
    moved = cli("models", "alias", "-p", "p", "churn", "champion", "1", "--reason", "launch")
    assert moved.stdout.strip() == "churn@champion: none -> 1"
    time.sleep(0.01)
    between = dt.datetime.now(dt.UTC).isoformat()
    time.sleep(0.01)
    cli("models", "alias", "-p", "p", "churn", "champion", "2", "--reason", "better")

    history = as_json(cli("models", "history", "-p", "p", "churn", "--json"))
    assert [(e["version"], e["reason"], e["actor"]) for e in history["events"]] == [
        (1, "launch", "admin"),
        (2, "better", "admin"),
    ]
    assert history["held"] == {"champion": 2}
    then = cli("models", "history", "-p", "p", "churn", "--alias", "champion", "--at", between)
    assert then.stdout.strip().endswith("champion: 1")
    at = as_json(cli("models", "history", "-p", "p", "churn", "--at", between, "--json"))
    assert at["held"] == {"champion": 1}

    card = cli("models", "card", "-p", "p", "churn@champion").stdout
    assert card.startswith("# Model card: churn version 2") and "| accuracy | 0.9 |" in card
    page = cli("models", "card", "-p", "p", "churn@1", "--html").stdout
    assert page.startswith("<!DOCTYPE html>") and "<h2>Licences</h2>" in page

    listed = as_json(cli("models", "ls", "-p", "p", "--json"))
    assert [(m["name"], m["latest_version"], m["aliases"]) for m in listed] == [
        ("churn", 2, {"champion": 2})
    ]
    shown = as_json(cli("models", "show", "-p", "p", "churn@champion", "--json"))
    assert (shown["version"], shown["flavor"], shown["signed"]) == (2, "sklearn", True)
    versions = as_json(cli("models", "versions", "-p", "p", "churn", "--json"))
    assert [v["version"] for v in versions] == [2, 1]
    cli("models", "update", "-p", "p", "churn", "--license", "MIT", "--intended-use", "tests")
    assert as_json(cli("models", "show", "-p", "p", "churn", "--json"))["license"] == "MIT"
    dropped = cli("models", "alias", "-p", "p", "churn", "champion", "--remove", "--reason", "x")
    assert dropped.stdout.strip() == "churn@champion: 2 -> none"
    cli("models", "rm", "-p", "p", "churn", "--yes")
    assert as_json(cli("models", "ls", "-p", "p", "--json")) == []


def test_bad_input_is_a_one_line_error(server: LiveServer, cli: Cli) -> None:
    run = _logged_run(server)
    cli("models", "register", "-p", "p", "churn", "--run", str(run), "--path", "model")
    no_reason = cli("models", "alias", "-p", "p", "churn", "champion", "1", ok=False)
    assert_one_line_error(no_reason, "--reason")
    bad_ref = cli("models", "card", "-p", "p", "churn@Bad!", ok=False)
    assert_one_line_error(bad_ref, "not a model reference")
    missing = cli("models", "show", "-p", "p", "churn@7", ok=False)
    assert_one_line_error(missing, "model 'churn' has no version 7")
    wrong_path = cli(
        "models", "register", "-p", "p", "churn", "--run", str(run), "--path", "nope", ok=False
    )
    assert_one_line_error(wrong_path, "no artifacts under 'nope'")
