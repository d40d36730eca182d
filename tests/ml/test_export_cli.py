"""Edge export end to end: ``underlay models export`` loads a verified version, exports it,
and registers the result as the next version of NAME-onnx with its report and lineage; the
route refuses a failed report; bad input is one line."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("skl2onnx")
pytest.importorskip("onnxruntime")

import underlay
from tests.cli.test_cli import Cli, assert_one_line_error
from tests.conftest import LiveServer
from underlay.client import Client
from underlay.errors import InvalidInput

X = np.random.RandomState(0).rand(200, 4)
Y = (X[:, 0] + X[:, 1] > 1).astype(np.int64)
COLUMNS = ["a", "b", "c", "d"]


def _register(admin: Client, project: str, model: Any, name: str) -> None:
    with underlay.start_run(project, name, client=admin) as run:
        run.log_model(model, "model", input_example=X[:5].astype(np.float32))
    admin.register_model(project, name, run=run.id, path="model")
    admin.set_alias(project, name, "champion", 1, reason="first")


def _holdout(admin: Client, project: str) -> None:
    import pyarrow as pa

    table = pa.table({**{c: X[100:, i] for i, c in enumerate(COLUMNS)}, "label": Y[100:]})
    admin.write_table(project, "holdout", table)


@pytest.fixture
def project(admin: Client) -> str:
    from sklearn.linear_model import LogisticRegression

    admin.create_project("p")
    _register(admin, "p", LogisticRegression().fit(X[:100], Y[:100]), "churn")
    _holdout(admin, "p")
    return "p"


@pytest.mark.slow  # the CLI process imports scikit-learn, onnxruntime (and torch)
def test_export_registers_a_verified_onnx_version_with_report_and_lineage(
    cli: Cli, admin: Client, project: str
) -> None:
    args = ["models", "export", "-p", project, "churn@champion", "--format", "onnx"]
    held = ["--held-out", "holdout", "--label", "label", "--runs", "5"]
    out = json.loads(cli(*args, "--quantize", "int8", *held, "--json").stdout)
    assert (out["source"]["model"], out["source"]["version"]) == ("churn", 1)
    version = out["version"]
    assert (version["model"], version["version"], version["flavor"]) == ("churn-onnx", 1, "onnx")
    assert version["signed"] and version["run"] is None
    report = out["report"]
    assert report["passed"] and report["quantize"] == "int8"
    assert (report["evaluated_on"], report["label"], report["evaluation_rows"]) == (
        "held-out",
        "label",
        100,
    )
    assert report["feature_names"] == COLUMNS
    assert [v["name"] for v in report["variants"]] == ["original", "onnx", "onnx-int8"]

    # the export loads verified, predicts as the original, and keeps its signed report
    loaded = admin.load_model(project, "churn-onnx@1")
    original = admin.load_model(project, "churn@1")
    rows = X[100:].astype(np.float32)
    assert loaded.flavor == "onnx"
    labels = loaded.predict(rows)["label"]  # skl2onnx's outputs: label and probabilities
    assert labels.tolist() == original.predict(X[100:]).tolist()
    graph = admin.lineage(project, "model_version", "churn@1", direction="downstream")
    edges = {(e.src.id, e.relation, e.dst.id) for e in graph.edges}
    assert ("churn@1", "exported", "churn-onnx@1") in edges
    assert [e.outcome for e in admin.list_audit(action="model.version.export")] == ["ok"]

    # without a held-out table the rows are drawn inside the signature's column ranges and
    # labelled by the original; printed as text; the next version
    text = cli(*args, "--runs", "5").stdout
    assert text.startswith("registered churn-onnx@2 (onnx) from churn@1\n")
    assert "accuracy change +0.000 points (tolerance 1, on 256 input-example rows)" in text


@pytest.mark.slow  # the CLI process imports scikit-learn, onnxruntime (and torch)
def test_an_export_that_changes_accuracy_is_refused_and_nothing_registered(
    cli: Cli, admin: Client, project: str
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from tests.ml.export_modules import Flipped

    _register(admin, project, Flipped(), "flip")
    first = min(v.version for v in admin.table_versions(project, "holdout"))
    result = cli(
        "models", "export", "-p", project, "flip@champion", "--held-out", f"holdout@{first}",
        "--label", "label", "--runs", "3", ok=False,
    )  # fmt: skip
    assert_one_line_error(result, "export refused: accuracy changed by -100.000 points")
    assert "flip-onnx" not in [m.name for m in admin.list_models(project)]


def _upload(admin: Client, project: str, files: dict[str, bytes]) -> list[dict[str, Any]]:
    listed = []
    for path, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        admin.upload_blob(project, data, digest=digest)
        listed.append({"path": path, "digest": digest, "size": len(data)})
    return listed


def test_the_route_refuses_a_failed_or_malformed_export(
    server: LiveServer, admin: Client, project: str
) -> None:
    from sklearn.linear_model import LogisticRegression

    from underlay.ml.export import ExportOptions, export_model

    model = LogisticRegression().fit(X[:100], Y[:100])
    result = export_model(model, X[:50], options=ExportOptions(runs=2, warmup=0))
    report = result.report.model_dump(mode="json")
    meta = json.dumps({"underlay_model": 1, "flavor": "onnx", "options": {}, "files": []})
    url = f"{server.url}/api/v1/projects/{project}/models/churn/versions/champion/exports"
    headers = {"Authorization": f"Bearer {server.admin_token}"}

    def post(files: dict[str, bytes], **body: Any) -> httpx.Response:
        listed = _upload(admin, project, files)
        return httpx.post(url, json={"files": listed, **body}, headers=headers)

    base = {"model.onnx": result.onnx, "underlay-model.json": meta.encode()}
    forged = {**report, "passed": False, "change": -5.0}
    answer = post({**base, "export_report.json": json.dumps(forged).encode()})
    assert answer.status_code == 400 and "export refused" in answer.json()["detail"]
    assert answer.json()["report"]["change"] == -5.0
    answer = post(base)
    assert answer.status_code == 400 and "export_report.json is missing" in answer.json()["detail"]
    other = {**base, "underlay-model.json": meta.replace('"onnx"', '"sklearn"').encode()}
    answer = post({**other, "export_report.json": json.dumps(report).encode()})
    assert answer.status_code == 400 and "registers an onnx model" in answer.json()["detail"]
    answer = post({**base, "export_report.json": b'{"format": "onnx"}'})
    assert answer.status_code == 400 and "is not an export report" in answer.json()["detail"]
    assert "churn-onnx" not in [m.name for m in admin.list_models(project)]
    # a version that does not exist, and another project's model, answer 404
    answer = httpx.post(url.replace("champion", "9"), json={"files": []}, headers=headers)
    assert answer.status_code == 422  # an empty file list is refused before any lookup
    good = {**base, "export_report.json": json.dumps(report).encode()}
    assert post(good, target="edge").status_code == 201
    listed = _upload(admin, project, good)
    missing = httpx.post(url.replace("champion", "9"), json={"files": listed}, headers=headers)
    assert missing.status_code == 404
    # static int8 from the SDK, calibrated on a table's feature columns, into a named model
    static = admin.export_model(
        project, "churn@1", quantize="int8-static", held_out="holdout", label="label",
        calibration="holdout", target="edge", runs=2,
    )  # fmt: skip
    assert (static.version.model, static.version.version) == ("edge", 2)
    assert static.report["quantize"] == "int8-static"
    assert static.report["variants"][-1]["name"] == "onnx-int8-static"
    admin.create_project("q")
    elsewhere = url.replace("/projects/p/", "/projects/q/")
    assert httpx.post(elsewhere, json={"files": listed}, headers=headers).status_code == 404


@pytest.mark.slow  # the CLI process imports scikit-learn, onnxruntime (and torch)
def test_bad_export_options_are_one_line_errors(cli: Cli, admin: Client, project: str) -> None:
    base = ["models", "export", "-p", project, "churn@champion"]
    result = cli(*base, "--format", "tflite", ok=False)
    assert_one_line_error(result, "--format 'tflite' is not supported: use --format onnx")
    result = cli(*base, "--tolerance", "-1", ok=False)
    assert_one_line_error(result, "tolerance must be a number of points >= 0")
    result = cli(*base, "--held-out", "holdout", ok=False)
    assert_one_line_error(result, "give the held-out table and its label column together")
    with pytest.raises(InvalidInput, match="is not a table reference"):
        admin.export_model(project, "churn@champion", held_out="holdout@x", label="label")
