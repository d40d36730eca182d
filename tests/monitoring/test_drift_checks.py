"""Drift checks of a real deployment, end to end: a model trained on a table version (so the
reference is found through lineage), served by a replica, sent traffic logged at a sample
rate of 1; checks through the API, the SDK and the CLI, on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families

import underlay
from tests.cli.conftest import clean_env, run_cli
from tests.conftest import LiveServer, _reset_pg, sqlite_url
from tests.serving.conftest import PROJECT, ready, serve, wait_until
from underlay.client import Client
from underlay.errors import InvalidInput, NotFound, PermissionDenied

pytestmark = pytest.mark.slow
NAME = "scorer-live"
FEATURES = ("x1", "x2", "x3", "x4")
SHIFTED = ("x1", "x3")
MODELS: dict[str, Any] = {}


def _frame(rows: int, seed: int, shifted: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = {f: rng.normal(0.0, 1.0, rows) for f in FEATURES}
    if shifted:
        data["x1"] = data["x1"] + 1.0  # moved by one standard deviation
        data["x3"] = data["x3"] * 2.5  # spread out
    return data


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def live(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("drift-checks")
    if request.param == "sqlite":
        yield from serve(tmp, sqlite_url(sqlite_template, tmp))
        return
    url: str = request.getfixturevalue("pg_url")
    _reset_pg(url)
    yield from serve(tmp, url)


@pytest.fixture(scope="module")
def deployed(live: LiveServer) -> Iterator[Client]:
    """Table ``customers`` (3,000 rows), a run that read version 1 of it and logged a model of
    four named inputs, registered as ``scorer`` and deployed as ``scorer-live``."""
    from sklearn.linear_model import LogisticRegression

    with live.client() as c:
        data = _frame(3000, seed=1)
        label = (data["x1"] + data["x2"] > 0).astype(np.int64)
        written = c.write_table(PROJECT, "customers", pa.table({**data, "label": label}))
        narrow = pa.table({"x1": data["x1"], "x2": data["x2"]})
        c.write_table(PROJECT, "narrow", narrow)
        inputs = [{"kind": "table", "name": "customers", "version": written.version}]
        fitted = LogisticRegression().fit(np.column_stack([data[f] for f in FEATURES]), label)
        MODELS["scorer"] = fitted
        with underlay.start_run(PROJECT, "drift", inputs=inputs, client=c) as run:
            example = {f: data[f][:5] for f in FEATURES}
            run.log_model(fitted, "model", input_example=example)
        c.register_model(PROJECT, "scorer", run=run.id, path="model")
        c.deploy(PROJECT, NAME, "scorer@1", replicas=1, log_sample_rate=1.0)
        ready(c, NAME, 1)
        yield c


def _send(c: Client, data: dict[str, np.ndarray], logged_before: int) -> None:
    rows = len(data["x1"])
    records = [{f: float(data[f][i]) for f in FEATURES} for i in range(rows)]
    for start in range(0, rows, 500):
        c.predict(PROJECT, NAME, records[start : start + 500])

    def logged() -> bool:
        return _logged(c) >= logged_before + rows

    wait_until(logged, "the prediction log to be written", within_s=60)


def live_alerts(c: Client) -> list[Any]:
    return [a for a in c.list_alerts(project=PROJECT) if a.kind == "drift"]


def _logged(c: Client) -> int:
    stats = c.deployment_stats(PROJECT, NAME)
    return int(stats.get("prediction_log", {}).get("logged_rows", 0))


def test_drift_flags_exactly_the_shifted_features(live: LiveServer, deployed: Client) -> None:
    c = deployed
    _send(c, _frame(2000, seed=2), 0)
    calm = c.check_drift(PROJECT, NAME, rows=2000)
    assert calm["state"] == "ok" and calm["flagged"] == []
    version = c.table_versions(PROJECT, "customers")[0].version  # what the run read
    assert calm["reference"] == f"customers@{version}" and calm["reference_source"] == "lineage"
    assert calm["rows"] == 2000 and calm["window"] == {"rows": 2000}
    assert [f["name"] for f in calm["features"]] == list(FEATURES)
    assert all(f["score"] < 0.1 and not f["drifted"] for f in calm["features"])
    assert not [a for a in c.list_alerts(project=PROJECT) if a.kind == "drift"]

    _send(c, _frame(2000, seed=3, shifted=True), 2000)
    check = c.check_drift(PROJECT, NAME, rows=2000)
    assert check["state"] == "drift"
    assert check["flagged"] == list(SHIFTED)
    by_name = {f["name"]: f for f in check["features"]}
    for name in FEATURES:
        assert by_name[name]["drifted"] is (name in SHIFTED)
        assert by_name[name]["method"] == "wasserstein" and by_name[name]["threshold"] == 0.1
        assert len(by_name[name]["histogram"]["labels"]) == 10  # deciles: chart data
    # a time window over everything logged holds both halves
    both = c.check_drift(PROJECT, NAME, last="1h", store=False)
    assert both["rows"] == 4000 and both["id"] is None and both["window"]["last"] == "1h"
    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    span = c.check_drift(PROJECT, NAME, since=hour_ago, store=False)
    assert span["rows"] == 4000 and span["window"]["until"] is None
    assert c.check_drift(PROJECT, NAME, until=hour_ago, store=False)["rows"] == 0
    # predictions against the training labels: the shift moved the predicted classes too
    with_target = c.check_drift(PROJECT, NAME, rows=2000, target="label", store=False)
    prediction = with_target["features"][-1]
    assert prediction["name"] == "out_output" and prediction["role"] == "prediction"
    assert prediction["drifted"] and with_target["flagged"] == [*SHIFTED, "out_output"]

    # stored, newest first, each readable by id
    reports = c.drift_reports(PROJECT, NAME)
    assert [r["id"] for r in reports] == [check["id"], calm["id"]]
    assert reports[0]["state"] == "drift" and reports[0]["flagged"] == list(SHIFTED)
    assert c.drift_report(PROJECT, NAME, calm["id"])["state"] == "ok"

    # the alert, once while it is open, naming the deployment
    alerts = [a for a in c.list_alerts(project=PROJECT) if a.kind == "drift"]
    assert len(alerts) == 1 and alerts[0].subject == NAME and "x1, x3" in alerts[0].message

    # audited, with the outcome
    entries = [e for e in c.list_audit(action="deployment.drift") if NAME in e.resource]
    flagged = {json.dumps(json.loads(e.detail).get("flagged")) for e in entries}
    assert {e.outcome for e in entries} == {"ok"} and flagged == {"[]", '["x1", "x3"]'}

    # /metrics: the latest scores per feature and the checks by state
    text = c._request("GET", "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    scores = {
        s.labels["feature"]: s.value
        for s in families["underlay_drift_score"].samples
        if s.labels["deployment"] == NAME
    }
    assert scores == pytest.approx({f["name"]: f["score"] for f in check["features"]})
    checks = {
        s.labels["state"]: s.value
        for s in families["underlay_drift_checks"].samples
        if s.labels["deployment"] == NAME and s.name == "underlay_drift_checks_total"
    }
    assert checks == {"ok": 1.0, "drift": 1.0, "too_few_rows": 0.0}


def test_a_small_window_is_too_few_rows_not_noise(deployed: Client) -> None:
    small = deployed.check_drift(PROJECT, NAME, rows=200)
    assert small["state"] == "too_few_rows" and small["flagged"] == []
    assert small["rows"] == 200 and small["min_rows"] == 1000
    assert all(f["score"] is None and f["status"] == "too_few_rows" for f in small["features"])
    lowered = deployed.check_drift(PROJECT, NAME, rows=200, min_rows=100, store=False)
    assert lowered["state"] in ("ok", "drift") and lowered["features"][0]["score"] is not None


def test_columns_the_log_or_the_reference_lacks_are_clear_errors(deployed: Client) -> None:
    with pytest.raises(InvalidInput, match=r"no column 'in_label' for the reference's feature"):
        deployed.check_drift(PROJECT, NAME, columns=["x1", "label"])
    with pytest.raises(InvalidInput, match=r"the reference narrow@0 has no column 'x3', 'x4'"):
        deployed.check_drift(PROJECT, NAME, reference="narrow")  # its published version
    with pytest.raises(NotFound, match="table 'nowhere' not found"):
        deployed.check_drift(PROJECT, NAME, reference="nowhere@1")
    with pytest.raises(InvalidInput, match="not an age"):
        deployed.check_drift(PROJECT, NAME, last="soon")
    with pytest.raises(InvalidInput, match="not both"):
        deployed.check_drift(PROJECT, NAME, rows=10, last="1h")
    # a refused check is audited with the reason, and stores nothing
    refused = [e for e in deployed.list_audit(action="deployment.drift") if e.outcome != "ok"]
    assert any("in_label" in e.detail for e in refused)
    assert all(
        "label" not in r["flagged"] and r["reference"].startswith("customers@")
        for r in deployed.drift_reports(PROJECT, NAME)
    )


def test_a_model_without_table_lineage_says_to_name_a_reference(deployed: Client) -> None:
    deployed.deploy(PROJECT, "churn-nolineage", "churn@1", replicas=1)
    try:
        with pytest.raises(InvalidInput, match=r"no reference: lineage shows no table version"):
            deployed.check_drift(PROJECT, "churn-nolineage")
    finally:
        deployed.delete_deployment(PROJECT, "churn-nolineage")


def test_another_projects_user_gets_404_and_a_viewer_may_only_look(
    live: LiveServer, deployed: Client
) -> None:
    deployed.create_user("mallory")
    deployed.add_member("other", "mallory", "admin")
    deployed.create_user("vera")
    deployed.add_member(PROJECT, "vera", "viewer")
    with Client(live.url, deployed.create_token("m", user="mallory").token) as mallory:
        with pytest.raises(NotFound):
            mallory.check_drift(PROJECT, NAME)
        with pytest.raises(NotFound):
            mallory.drift_reports(PROJECT, NAME)
        with pytest.raises(NotFound):
            mallory.deployment_performance(PROJECT, NAME)
        text = mallory._request("GET", "/metrics").text
        assert "underlay_drift" not in "".join(
            line for line in text.splitlines() if f'project="{PROJECT}"' in line
        )
    with Client(live.url, deployed.create_token("v", user="vera").token) as vera:
        stored = len(deployed.drift_reports(PROJECT, NAME))
        with pytest.raises(PermissionDenied, match="viewer"):
            vera.check_drift(PROJECT, NAME)
        assert vera.check_drift(PROJECT, NAME, store=False)["id"] is None
        assert len(vera.drift_reports(PROJECT, NAME)) == stored


def test_cli_drift_json_and_table(live: LiveServer, deployed: Client) -> None:
    env = clean_env(UNDERLAY_URL=live.url, UNDERLAY_TOKEN=live.admin_token)
    done = run_cli("monitor", "drift", "-p", PROJECT, NAME, "--rows", "2000", "--json", env=env)
    assert done.returncode == 0, done.stderr
    check: dict[str, Any] = json.loads(done.stdout)
    assert check["state"] == "drift" and check["flagged"] == list(SHIFTED)
    assert {"name", "kind", "method", "score", "threshold", "drifted", "histogram"} <= set(
        check["features"][0]
    )
    table = run_cli("monitor", "drift", "-p", PROJECT, NAME, "--rows", "2000", env=env)
    assert table.returncode == 0, table.stderr
    assert "customers@0" in table.stdout and "drift: 2 flagged (x1, x3)" in table.stdout
    bad = run_cli("monitor", "drift", "-p", PROJECT, NAME, "--reference", "narrow@0", env=env)
    assert bad.returncode == 1 and bad.stderr.startswith("error: the reference narrow@0")
    assert len(bad.stderr.strip().splitlines()) == 1
    listed = run_cli("monitor", "reports", "-p", PROJECT, NAME, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    newest = json.loads(listed.stdout)[:2]  # the table's check, then the --json one
    assert newest[1]["id"] == check["id"] and f"report {newest[0]['id']}" in table.stdout
    alerts = [a for a in live_alerts(deployed) if a.subject == NAME]
    assert len(alerts) == 1  # two more drift checks refreshed the one open alert
    shown = run_cli("monitor", "reports", "-p", PROJECT, NAME, env=env)
    assert shown.returncode == 0 and "x1, x3" in shown.stdout


def test_performance_from_feedback_with_serving_counters(
    live: LiveServer, deployed: Client
) -> None:
    data = _frame(40, seed=4)
    truth = (data["x1"] - data["x2"] > 0).astype(int)  # labels the model gets partly wrong
    before = _logged(deployed)
    for i in range(40):
        record = {f: float(data[f][i]) for f in FEATURES}
        deployed.predict(PROJECT, NAME, [record], request_id=f"perf-{i:03d}")

    def logged() -> bool:
        return _logged(deployed) >= before + 40

    wait_until(logged, "the prediction log to be written", within_s=60)
    labels = [{"request_id": f"perf-{i:03d}", "label": int(truth[i])} for i in range(40)]
    deployed.send_feedback(PROJECT, NAME, labels)
    found = deployed.deployment_performance(PROJECT, NAME, window_s=3600)
    predicted = MODELS["scorer"].predict(np.column_stack([data[f] for f in FEATURES]))
    assert found["overall"]["rows"] == 40
    assert found["overall"]["metrics"]["accuracy"] == pytest.approx(
        float((predicted == truth).mean())
    )
    assert sum(w["rows"] for w in found["windows"]) == 40
    serving = found["serving"]
    assert serving["requests"] >= 40 and serving["errors"] == 0 and serving["error_rate"] == 0
    assert serving["latency_ms"]["count"] == serving["requests"]

    env = clean_env(UNDERLAY_URL=live.url, UNDERLAY_TOKEN=live.admin_token)
    done = run_cli("monitor", "performance", "-p", PROJECT, NAME, "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["overall"]["rows"] == 40
    table = run_cli("monitor", "performance", "-p", PROJECT, NAME, env=env)
    assert table.returncode == 0 and "overall" in table.stdout and "0 errors" in table.stdout


def test_a_model_of_two_tables_needs_a_named_reference(deployed: Client) -> None:
    inputs = [
        {"kind": "table", "name": "customers", "version": 0},
        {"kind": "table", "name": "narrow", "version": 0},
    ]
    with underlay.start_run(PROJECT, "drift", inputs=inputs, client=deployed) as run:
        example = {f: np.zeros(5) for f in FEATURES}
        run.log_model(MODELS["scorer"], "model", input_example=example)
    version = deployed.register_model(PROJECT, "scorer", run=run.id, path="model").version
    deployed.deploy(PROJECT, "scorer-two", f"scorer@{version}", replicas=1)
    try:
        with pytest.raises(InvalidInput, match=r"several table versions \(customers@0, narrow@0\)"):
            deployed.check_drift(PROJECT, "scorer-two")
        named = deployed.check_drift(PROJECT, "scorer-two", reference="customers@0")
        # nothing logged yet: a state, not an error and not a score
        assert named["state"] == "too_few_rows" and named["rows"] == 0
        assert named["reference_source"] == "override" and named["id"] is not None
        assert not [a for a in deployed.list_alerts(project=PROJECT) if a.subject == "scorer-two"]
        assert [f["name"] for f in named["features"]] == list(FEATURES)
    finally:
        deployed.delete_deployment(PROJECT, "scorer-two")


def test_a_check_in_a_callers_session_is_stored_with_it(live: LiveServer, deployed: Client) -> None:
    """The retraining loop's path: one transaction of its own holds the check, its report,
    audit entry and alert."""
    from underlay.data.tables import TableStore
    from underlay.identity import SYSTEM
    from underlay.monitoring.checks import Window, check_drift, list_drift_reports
    from underlay.store import Scope

    platform = live.platform
    with platform.db.session(Scope.everything()) as session:
        check = check_drift(
            session,
            platform,
            PROJECT,
            NAME,
            window=Window(rows=2000),
            actor=SYSTEM,
            tables=TableStore(live.settings),
        )
        assert check.id is not None and check.state == "drift"
        project_id = deployed_project_id(session)
        newest = list_drift_reports(session, project_id, NAME, limit=1)[0]
        assert newest["id"] == check.id and newest["actor"] == "system"
    assert deployed.drift_reports(PROJECT, NAME, limit=1)[0]["id"] == check.id
    entries = deployed.list_audit(action="deployment.drift", actor="system")
    assert [json.loads(e.detail)["report"] for e in entries] == [check.id]


def deployed_project_id(session: Any) -> int:
    from sqlalchemy import select

    from underlay.store.models import Project

    found = session.scalar(select(Project.id).where(Project.name == PROJECT))
    assert found is not None
    return int(found)


def test_deleting_a_project_removes_its_drift_reports(live: LiveServer, deployed: Client) -> None:
    from sqlalchemy import func, select

    from underlay.monitoring.models import DriftReportRow
    from underlay.store import Scope
    from underlay.store.models import Project

    deployed.create_project("gone")
    with live.platform.db.session(Scope.everything()) as session:
        pid = session.scalar(select(Project.id).where(Project.name == "gone"))
        assert pid is not None
        session.add(DriftReportRow(project_id=pid, deployment="d", reference="t@0", rows=0,
                                   state="too_few_rows"))  # fmt: skip
    deployed.delete_project("gone")
    with live.platform.db.session(Scope.everything()) as session:
        left = session.scalar(
            select(func.count()).select_from(DriftReportRow).where(DriftReportRow.project_id == pid)
        )
    assert left == 0
