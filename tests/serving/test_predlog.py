"""Prediction logs and feedback against the real data layer, on SQLite and PostgreSQL: a model
trained (through a tracked run) on a table with PII policies, its logged inputs masked by
those policies (tokens equal to the training table's), schema kept across writes, labels
stored by request id and joined with the log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sqlalchemy import select

import underlay
from tests.conftest import LiveServer
from underlay.client import Client
from underlay.data.tables import TableStore
from underlay.errors import InvalidInput
from underlay.serving.feedback import Label, joined, record_feedback
from underlay.serving.predlog import PredictionLogger
from underlay.serving.predlog_writer import PredictionTableWriter, open_logger, training_policies
from underlay.store import Scope
from underlay.store.models import Project

EMAILS = ["ann@example.com", "bob@example.org", "cy@example.net", "di@example.com"]
PHONES = ["+47 912 34 567", "+47 913 45 678", "+47 914 56 789", "+47 915 67 890"]


@dataclass
class Trained:
    server: LiveServer
    store: TableStore
    project_id: int
    version: int

    def writer(self, deployment: str = "web") -> PredictionTableWriter:
        platform = self.server.platform
        return PredictionTableWriter(
            platform.db, self.store, platform.keyring, self.project_id, deployment
        )

    def read(self, name: str) -> list[dict[str, Any]]:
        with self.server.platform.db.session(Scope.projects(self.project_id)) as session:
            table = self.store.read(session, self.project_id, name)
            assert table.published_version is not None
            data = self.store.dataset(table, table.published_version).to_table()
        return data.sort_by([("request_id", "ascending"), ("row", "ascending")]).to_pylist()


def _train(admin: Client) -> int:
    from sklearn.linear_model import LogisticRegression

    x = np.arange(4, dtype=np.float64).reshape(-1, 1)
    with underlay.start_run(
        "shop", "churn", client=admin, inputs=[{"kind": "table", "name": "customers", "version": 0}]
    ) as run:
        run.log_model(LogisticRegression().fit(x, [0, 0, 1, 1]), "model", input_example=x[:2])
    return admin.register_model("shop", "churn", run=run.id, path="model").version


@pytest.fixture
def trained(server: LiveServer) -> Trained:
    """A live server of its own (the serving tests' shared one has no PII table)."""
    customers = pa.table(
        {
            "email": EMAILS,
            "phone": PHONES,
            "notes": ["call after 5", "vip", "none", "late payer"],
            "x": [0.0, 1.0, 2.0, 3.0],
        }
    )
    with server.client() as admin:
        admin.create_project("shop")
        admin.write_table(
            "shop", "customers", customers, pii={"phone": "partial", "notes": "redact"}
        )
        version = _train(admin)
    with server.platform.db.session(Scope.everything()) as session:
        project_id = session.scalar(select(Project.id).where(Project.name == "shop"))
    assert project_id is not None
    return Trained(server, TableStore(server.settings), project_id, version)


def _inputs(rows: slice) -> dict[str, np.ndarray]:
    return {
        "email": np.array(EMAILS[rows], dtype=object),
        "phone": np.array(PHONES[rows], dtype=object),
        "notes": np.array(["asked for a refund"] * len(EMAILS[rows]), dtype=object),
        "x": np.arange(4, dtype=np.float64)[rows],
    }


def test_the_training_tables_policies_are_found_through_lineage(trained: Trained) -> None:
    with trained.server.platform.db.session(Scope.projects(trained.project_id)) as session:
        found = training_policies(session, trained.project_id, "churn", trained.version)
        assert found == {"email": "tokenize", "phone": "partial", "notes": "redact"}
        assert training_policies(session, trained.project_id, "churn", 99) == {}


def test_logged_inputs_are_masked_as_the_training_table_is(trained: Trained) -> None:
    writer = trained.writer()
    logger = PredictionLogger(writer, sample_rate=1.0, deployment="web", model="churn")
    outputs = {"label": np.array([0, 1]), "proba": np.array([0.2, 0.9])}
    logger.record("req-1", _inputs(slice(0, 2)), outputs, 2.5, trained.version, now=1000.0)
    logger.record(
        "req-2",
        _inputs(slice(2, 3)),
        {"label": np.array([1]), "proba": np.array([0.7])},
        1.0,
        trained.version,
        now=1001.0,
    )
    assert logger.flush() == 3
    assert logger.stats()["failed_rows"] == 0
    rows = trained.read("web_predictions")
    with trained.server.platform.db.session(Scope.projects(trained.project_id)) as session:
        table = trained.store.read(session, trained.project_id, "customers")
        customers = trained.store.dataset(table, 0).to_table().to_pylist()
    assert [r["request_id"] for r in rows] == ["req-1", "req-1", "req-2"]
    for logged, customer in zip(rows, customers, strict=False):
        # the same token as the training table: logs and training data stay joinable
        assert logged["in_email"] == customer["email"]
        assert logged["in_email"].startswith("tok_email_")
        assert logged["in_phone"] == customer["phone"]  # partial, as in training
        assert logged["in_phone"].endswith(PHONES[int(logged["in_x"])][-4:])
        assert "912" not in logged["in_phone"] and "913" not in logged["in_phone"]
        assert logged["in_notes"] == "[REDACTED]"
    assert [r["in_x"] for r in rows] == [0.0, 1.0, 2.0]
    assert [r["out_label"] for r in rows] == [0, 1, 1]
    assert rows[0]["model"] == "churn" and rows[0]["model_version"] == trained.version
    assert writer.last is not None and writer.last.pii is not None
    policies = {c["column"]: c["policy"] for c in writer.last.pii["columns"]}
    assert policies["in_email"] == "tokenize" and policies["in_notes"] == "redact"


def test_later_writes_keep_the_stored_types_and_add_new_columns(trained: Trained) -> None:
    logger = open_logger(
        trained.server.platform,
        trained.store,
        trained.project_id,
        "web",
        model="churn",
        sample_rate=1.0,
        flush_interval_s=3600,
    )
    logger.record("a", {"x": np.array([1.0])}, [0], 1.0, trained.version, now=1.0)
    assert logger.flush() == 1
    # ints into the float column; a canary version with one more input; a list of records
    logger.record("b", {"x": np.array([2]), "age": np.array([40])}, [1], 1.0, 2, now=2.0)
    logger.record("c", [{"x": 3}], [1], 1.0, trained.version, now=3.0, arm="canary")
    assert logger.flush() == 2, logger.stats()["last_error"]
    rows = trained.read("web_predictions")
    assert [(r["request_id"], r["in_x"], r["in_age"]) for r in rows] == [
        ("a", 1.0, None),
        ("b", 2.0, 40),
        ("c", 3.0, None),
    ]
    assert rows[2]["arm"] == "canary"
    logger.record("d", {"x": np.array([4.0])}, [1], 1.0, trained.version, now=4.0)
    logger.close()  # writes what is left
    assert [r["request_id"] for r in trained.read("web_predictions")][-1] == "d"


def test_feedback_is_stored_flagged_and_joined_with_the_log(trained: Trained) -> None:
    platform = trained.server.platform
    logger = PredictionLogger(trained.writer(), sample_rate=1.0, deployment="web", model="churn")
    logger.record("req-1", _inputs(slice(0, 2)), [0, 1], 2.0, trained.version, now=1000.0)
    logger.record("req-2", _inputs(slice(2, 3)), [1], 2.0, trained.version, now=2000.0)
    logger.flush()

    def give(labels: list[Label], now: float) -> Any:
        return record_feedback(
            platform.db,
            trained.store,
            platform.keyring,
            trained.project_id,
            "web",
            labels,
            now=now,
        )

    first = give(
        [Label("req-1", 1), Label("req-1", 0, row=1), Label("never-seen", "churned")], now=3000
    )
    assert first.table == "web_feedback" and first.accepted == 3 and first.unlogged == 1
    second = give([Label("req-1", 0), Label("req-2", True)], now=4000)  # corrects req-1 row 0
    assert second.unlogged == 0 and second.version == first.version + 1
    stored = trained.read("web_feedback")
    triples = [(r["request_id"], r["label"], r["logged"]) for r in stored]
    assert len(triples) == 5
    assert ("never-seen", '"churned"', False) in triples and ("req-1", "1", True) in triples
    with platform.db.session(Scope.projects(trained.project_id)) as session:
        rows = joined(session, trained.store, trained.project_id, "web").to_pylist()
        late = joined(session, trained.store, trained.project_id, "web", since=1500).to_pylist()
        early = joined(session, trained.store, trained.project_id, "web", until=1500)
        none = joined(session, trained.store, trained.project_id, "other")
    assert [(r["request_id"], r["row"], r["label"], r["label_value"]) for r in rows] == [
        ("req-1", 0, "0", 0.0),  # the latest label wins
        ("req-1", 1, "0", 0.0),
        ("req-2", 0, "true", 1.0),
    ]
    assert rows[0]["in_email"].startswith("tok_email_") and rows[0]["label_ts"].timestamp() == 4000
    assert [r["request_id"] for r in late] == ["req-2"]
    assert early.num_rows == 2
    assert none.num_rows == 0


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([], "at least one label"),
        ([Label("", 1)], r"labels\[0\].request_id"),
        ([Label("r", float("nan"))], r"labels\[0\].label must be a JSON value"),
        ([Label("r", None)], r"labels\[0\].label is missing"),
        ([Label("r", 1), Label("r", 1, row=-1)], r"labels\[1\].row"),
        ([Label("r", "x" * 5000)], "over 4096 characters"),
    ],
)
def test_bad_feedback_is_refused_and_nothing_is_written(
    trained: Trained, labels: list[Label], message: str
) -> None:
    platform = trained.server.platform
    with pytest.raises(InvalidInput, match=message):
        record_feedback(
            platform.db, trained.store, platform.keyring, trained.project_id, "web", labels, now=1
        )
    with platform.db.session(Scope.projects(trained.project_id)) as session:
        assert (
            trained.store.get(session, trained.project_id, "web_feedback", missing_ok=True) is None
        )


def test_label_values_are_numbers_where_they_can_be() -> None:
    from underlay.serving.feedback import _number

    assert [_number(v) for v in (1, 2.5, True, "1", [1], {"a": 1}, 10**400)] == [
        1.0,
        2.5,
        1.0,
        None,
        None,
        None,
        None,
    ]
