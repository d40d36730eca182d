"""The model registry through the real server, on SQLite and PostgreSQL: registration from a
run's logged model, signed manifests, verified loading (and its refusals, audited, naming the
file), aliases and their history, model cards, and project scope."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, update

import underlay
from tests.conftest import LiveServer
from underlay.client import Client
from underlay.errors import IntegrityFailure, InvalidInput, NotFound
from underlay.ml.registry.models import ModelVersion, ModelVersionFile
from underlay.store import Scope

X = np.random.RandomState(0).rand(40, 4)
Y = (X[:, 0] + X[:, 1] > 1).astype(int)


def _model() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression().fit(X, Y)


@pytest.fixture
def project(admin: Client) -> str:
    admin.create_project("p")
    return "p"


def _logged_run(admin: Client, project: str, tmp_path: Path, *, with_data: bool = False) -> int:
    inputs = []
    if with_data:
        folder = tmp_path / "train"
        folder.mkdir()
        (folder / "rows.csv").write_text("a,b\n1,2\n")
        version = admin.push_dataset(project, "churn-rows", folder)
        inputs = [{"kind": "dataset", "name": "churn-rows", "version": version.version}]
    with underlay.start_run(project, "churn", client=admin, inputs=inputs) as run:
        run.log_params({"C": 1.0})
        run.log(step=0, accuracy=0.91, loss=0.2)
        run.log(step=0, **{"slice/region.eu/accuracy": 0.88, "slice/region.us/accuracy": 0.93})
        run.log_model(_model(), "model", input_example=X[:5])
    return run.id


def test_register_alias_and_load_a_signed_model(
    server: LiveServer, admin: Client, project: str, tmp_path: Path
) -> None:
    run = _logged_run(admin, project, tmp_path)
    version = admin.register_model(project, "churn", run=run, path="model")
    assert (version.version, version.flavor, version.run, version.signed) == (
        1,
        "sklearn",
        run,
        True,
    )
    assert version.key_id == server.platform.signer.key_id
    assert version.signature["inputs"][0]["shape"] == [-1, 4]
    assert version.signature["outputs"][0]["dtype"] == "int64"
    admin.set_alias(project, "churn", "champion", 1, reason="first model")

    model = admin.load_model(project, "churn@champion")
    assert model.flavor == "sklearn"
    assert model.predict(X[:7]).tolist() == _model().predict(X[:7]).tolist()
    assert admin.load_model(project, "churn@1").signature is not None
    audit = admin.list_audit(action="model.load")
    assert [e.outcome for e in audit] == ["ok", "ok"]

    listed = admin.list_models(project)
    assert [(m.name, m.latest_version, m.aliases) for m in listed] == [
        ("churn", 1, {"champion": 1})
    ]
    assert admin.read_model_version(project, "churn@champion").aliases == ["champion"]


def test_top_level_load_model_uses_the_environment(
    server: LiveServer, admin: Client, project: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _logged_run(admin, project, tmp_path)
    admin.register_model(project, "churn", run=run, path="model")
    monkeypatch.setenv("UNDERLAY_URL", server.url)
    monkeypatch.setenv("UNDERLAY_TOKEN", server.admin_token)
    monkeypatch.setenv("UNDERLAY_HOME", str(tmp_path / "client-home"))
    model = underlay.load_model(project, "churn@1")
    assert model.predict(X[:3]).tolist() == _model().predict(X[:3]).tolist()


def _version_files(server: LiveServer, name: str, version: int) -> tuple[int, dict[str, str]]:
    with server.platform.db.session(Scope.everything()) as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.version == version).limit(1))
        assert row is not None
        files = {
            f.path: f.digest
            for f in session.scalars(
                select(ModelVersionFile).where(ModelVersionFile.version_id == row.id)
            )
        }
        return row.project_id, files


def _refusals(admin: Client) -> list[Any]:
    return [e for e in admin.list_audit(action="model.load") if e.outcome != "ok"]


def test_a_blob_altered_in_the_store_is_refused_naming_the_file_and_audited(
    server: LiveServer, admin: Client, project: str, tmp_path: Path
) -> None:
    run = _logged_run(admin, project, tmp_path)
    admin.register_model(project, "churn", run=run, path="model")
    project_id, files = _version_files(server, "churn", 1)
    blob = Path(server.platform.blobs.location(project_id, files["model.skops"]))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of the encrypted bytes
    blob.write_bytes(bytes(data))

    with pytest.raises(
        IntegrityFailure, match=r"file 'model\.skops' of model 'churn' version 1"
    ) as e:
        admin.load_model(project, "churn@1")
    assert e.value.extra["file"] == "model.skops"
    refused = _refusals(admin)
    assert len(refused) == 1 and refused[0].outcome == "error"
    assert "file 'model.skops'" in json.loads(refused[0].detail)["error"]
    assert refused[0].resource == "project:p/model:churn@1"


def test_a_replaced_or_missing_signature_is_refused_and_audited(
    server: LiveServer, admin: Client, project: str, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    run = _logged_run(admin, project, tmp_path)
    admin.register_model(project, "churn", run=run, path="model")
    admin.register_model(project, "churn", run=run, path="model")
    with server.platform.db.session(Scope.everything()) as session:
        v1 = session.scalar(select(ModelVersion).where(ModelVersion.version == 1))
        assert v1 is not None
        forged = Ed25519PrivateKey.generate().sign(v1.manifest)  # another key's signature
        session.execute(
            update(ModelVersion).where(ModelVersion.version == 1).values(manifest_signature=forged)
        )
        session.execute(
            update(ModelVersion).where(ModelVersion.version == 2).values(manifest_signature=None)
        )
    with pytest.raises(IntegrityFailure, match="signature of model 'churn' version 1 does not"):
        admin.load_model(project, "churn@1")
    with pytest.raises(IntegrityFailure, match="version 2 is not signed") as e:
        admin.load_model(project, "churn@2")
    assert e.value.extra["file"] == "MANIFEST"
    assert admin.read_model_version(project, "churn@2").signed is False
    refused = _refusals(admin)
    assert [r.resource for r in refused] == ["project:p/model:churn@1", "project:p/model:churn@2"]


def test_a_manifest_moved_to_another_version_is_refused(
    server: LiveServer, admin: Client, project: str, tmp_path: Path
) -> None:
    run = _logged_run(admin, project, tmp_path)
    admin.register_model(project, "churn", run=run, path="model")
    admin.register_model(project, "churn", run=run, path="model")
    with server.platform.db.session(Scope.everything()) as session:
        rows = {v.version: v for v in session.scalars(select(ModelVersion))}
        rows[2].manifest, rows[2].manifest_signature = rows[1].manifest, rows[1].manifest_signature
    with pytest.raises(IntegrityFailure, match="describes 'churn' version 1"):
        admin.load_model(project, "churn@2")


def test_alias_history_answers_which_version_held_it_when(
    admin: Client, project: str, tmp_path: Path
) -> None:
    run = _logged_run(admin, project, tmp_path)
    for _ in range(3):
        admin.register_model(project, "churn", run=run, path="model")
    before = dt.datetime.now(dt.UTC)
    time.sleep(0.01)
    admin.set_alias(project, "churn", "champion", 1, reason="launch")
    time.sleep(0.01)
    between = dt.datetime.now(dt.UTC)
    time.sleep(0.01)
    moved = admin.set_alias(project, "churn", "champion", 2, reason="better recall")
    admin.set_alias(project, "churn", "challenger", 3, reason="try it")
    admin.remove_alias(project, "churn", "challenger", reason="worse")
    assert (moved.previous_version, moved.version, moved.actor) == (1, 2, "admin")

    then = admin.alias_history(project, "churn", alias="champion", at=between)
    assert then.held == {"champion": 1}
    assert [(e.version, e.reason) for e in then.events] == [(1, "launch")]
    assert admin.alias_history(project, "churn", alias="champion", at=before).held == {
        "champion": None
    }
    now = admin.alias_history(project, "churn")
    assert now.held == {"champion": 2, "challenger": None}
    assert [(e.alias, e.version) for e in now.events] == [
        ("champion", 1),
        ("champion", 2),
        ("challenger", 3),
        ("challenger", None),
    ]
    assert admin.read_model(project, "churn").aliases == {"champion": 2}
    actions = {e.action for e in admin.list_audit(project="p")}
    assert {"model.alias.set", "model.alias.remove", "model.version.create"} <= actions
    with pytest.raises(InvalidInput, match="alias 'latest'"):
        admin.set_alias(project, "churn", "latest", 1, reason="x")
    with pytest.raises(NotFound, match="no version 9"):
        admin.set_alias(project, "churn", "champion", 9, reason="x")


def test_the_card_holds_use_data_metrics_slices_limits_and_licences(
    admin: Client, project: str, tmp_path: Path
) -> None:
    run = _logged_run(admin, project, tmp_path, with_data=True)
    admin.register_model(project, "churn", run=run, path="model")
    admin.set_alias(project, "churn", "champion", 1, reason="first")
    admin.update_model(
        project,
        "churn",
        intended_use="Rank accounts by churn risk <script>alert(1)</script>",
        limitations="Trained on EU and US accounts only.",
        license="Apache-2.0",
        data_license="CC-BY-4.0",
    )
    card = admin.model_card(project, "churn@champion")
    text = card.text
    assert text.startswith("# Model card: churn version 1")
    assert [s.key for s in card.sections] == [
        "intended_use",
        "details",
        "training_data",
        "metrics",
        "evaluation_slices",
        "limitations",
        "licences",
    ]
    assert "- dataset_version:churn-rows@1" in text
    assert "| accuracy | 0.91 |" in text and "| C | 1.0 |" in text
    assert "| region.eu | 0.88 |" in text and "| region.us | 0.93 |" in text
    assert "Trained on EU and US accounts only." in text
    assert "| Model | Apache-2.0 |" in text and "| Training data | CC-BY-4.0 |" in text
    assert "<script>" not in text
    page = admin.model_card(project, "churn@1", html=True).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert "<td>region.eu</td>" in page
    graph = admin.lineage(project, "model_version", "churn@1", direction="upstream")
    assert {(n.kind, n.id) for n in graph.nodes} >= {
        ("run", str(run)),
        ("dataset_version", "churn-rows@1"),
    }


def test_registration_refuses_what_is_not_a_logged_model(
    admin: Client, project: str, tmp_path: Path
) -> None:
    run = _logged_run(admin, project, tmp_path)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    plain = admin.create_run(project, "churn")
    admin.log_artifact(project, plain.id, other, "notes/notes.txt")
    with pytest.raises(InvalidInput, match=r"hold no underlay-model\.json"):
        admin.register_model(project, "churn", run=plain.id, path="notes")
    with pytest.raises(InvalidInput, match="no artifacts under 'weights'"):
        admin.register_model(project, "churn", run=run, path="weights")
    with pytest.raises(InvalidInput, match=r"'\.\.' segment"):
        admin.register_model(project, "churn", run=run, path="../model")
    with pytest.raises(NotFound):
        admin.register_model(project, "churn", run=run + 100, path="model")
    with pytest.raises(InvalidInput, match="model name"):
        admin.register_model(project, "Bad Name", run=run, path="model")
    assert admin.list_models(project) == []


def test_another_projects_models_answer_404(
    server: LiveServer, admin: Client, tmp_path: Path
) -> None:
    admin.create_project("a")
    admin.create_project("b")
    run = _logged_run(admin, "a", tmp_path)
    admin.register_model("a", "churn", run=run, path="model")
    admin.create_user("bob", password="a-long-password-1")
    admin.add_member("b", "bob")
    token = admin.create_token("bob", user="bob").token
    with Client(server.url, token) as bob:
        with pytest.raises(NotFound):
            bob.read_model("a", "churn")
        with pytest.raises(NotFound):
            bob.load_model("a", "churn@1")
        with pytest.raises(NotFound):
            bob.read_model("b", "churn")
        with pytest.raises(NotFound):
            bob.register_model("b", "churn", run=run, path="model")  # a's run, seen from b
        assert bob.list_models("b") == []
    admin.delete_project("a")  # its models, versions and their blobs go with it
    with server.platform.db.session(Scope.everything()) as session:
        assert session.scalars(select(ModelVersion)).all() == []


def test_a_pinned_key_the_server_does_not_sign_with_is_refused_by_the_client(
    admin: Client, project: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _logged_run(admin, project, tmp_path)
    admin.register_model(project, "churn", run=run, path="model")
    monkeypatch.setenv("UNDERLAY_SIGNING_KEY_ID", "0123456789abcdef")
    with pytest.raises(IntegrityFailure, match="not by this platform's key '0123456789abcdef'"):
        admin.load_model(project, "churn@latest")
    refused = _refusals(admin)
    assert [(r.outcome, json.loads(r.detail)["file"]) for r in refused] == [("denied", "MANIFEST")]


def test_a_version_outlives_its_run_and_keeps_its_data_lineage(
    admin: Client, project: str, tmp_path: Path
) -> None:
    run = _logged_run(admin, project, tmp_path, with_data=True)
    admin.register_model(project, "churn", run=run, path="model")
    admin.delete_run(project, run)
    assert admin.read_model_version(project, "churn@latest").run is None
    assert admin.load_model(project, "churn@1").predict(X[:2]).shape == (2,)
    graph = admin.lineage(project, "model_version", "churn@1", direction="upstream")
    assert [(n.kind, n.id) for n in graph.nodes][1:] == [("dataset_version", "churn-rows@1")]
    assert "- dataset_version:churn-rows@1" in admin.model_card(project, "churn@1").text
    admin.update_model(project, "churn", license="MIT")
    admin.delete_model(project, "churn")
    with pytest.raises(NotFound):
        admin.read_model(project, "churn")
    actions = {e.action for e in admin.list_audit(project="p")}
    assert {"model.update", "model.delete"} <= actions
