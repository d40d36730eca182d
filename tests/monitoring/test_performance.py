"""Performance from ground truth, checked value for value against scikit-learn."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from underlay.errors import InvalidInput
from underlay.monitoring.performance import (
    classification_metrics,
    expected_calibration_error,
    performance,
    regression_metrics,
)

metrics = pytest.importorskip("sklearn.metrics")
calibration = pytest.importorskip("sklearn.calibration")


def _sk_ece(y: Any, prob: Any, bins: int) -> float:
    true, pred = calibration.calibration_curve(y, prob, n_bins=bins, strategy="uniform")
    ids = np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], prob)
    counts = np.bincount(ids, minlength=bins)
    counts = counts[counts > 0]
    return float(np.sum(counts * np.abs(true - pred)) / len(y))


def test_binary_figures_equal_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    prob = np.clip(0.3 * y + rng.random(500) * 0.7, 0, 1).round(2)  # ties in the scores
    pred = (prob >= 0.5).astype(int)
    got, notes = classification_metrics(y.tolist(), pred.tolist(), prob.tolist(), bins=10)
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(y, pred), abs=1e-12)
    assert got["precision"] == pytest.approx(metrics.precision_score(y, pred), abs=1e-12)
    assert got["recall"] == pytest.approx(metrics.recall_score(y, pred), abs=1e-12)
    assert got["f1"] == pytest.approx(metrics.f1_score(y, pred), abs=1e-12)
    macro = metrics.precision_recall_fscore_support(y, pred, average="macro")
    assert [got["precision_macro"], got["recall_macro"], got["f1_macro"]] == pytest.approx(
        list(macro[:3]), abs=1e-12
    )
    assert got["roc_auc"] == pytest.approx(metrics.roc_auc_score(y, prob), abs=1e-12)
    assert got["calibration_error"] == pytest.approx(_sk_ece(y, prob, 10), abs=1e-12)
    assert notes == {}


def test_multiclass_macro_figures_equal_sklearn_and_auc_says_why_not() -> None:
    rng = np.random.default_rng(2)
    y = rng.choice(["a", "b", "c", "d"], 400)
    pred = np.where(rng.random(400) < 0.6, y, rng.choice(["a", "b", "c", "e"], 400))
    got, notes = classification_metrics(y.tolist(), pred.tolist())
    labels = sorted(set(y) | set(pred))
    p, r, f, _ = metrics.precision_recall_fscore_support(
        y, pred, labels=labels, average="macro", zero_division=0
    )
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(y, pred), abs=1e-12)
    assert [got["precision_macro"], got["recall_macro"], got["f1_macro"]] == pytest.approx(
        [p, r, f], abs=1e-12
    )
    assert "precision" not in got and got["roc_auc"] is None
    assert notes["roc_auc"] == "no scores or probabilities are logged"


def test_probabilities_per_class_give_auc_and_calibration() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p1 = rng.random(300)
    proba = np.column_stack([1 - p1, p1])
    got, _ = classification_metrics(y.tolist(), (p1 > 0.5).astype(int).tolist(), proba.tolist())
    assert got["roc_auc"] == pytest.approx(metrics.roc_auc_score(y, p1), abs=1e-12)
    assert got["calibration_error"] == pytest.approx(_sk_ece(y, p1, 10), abs=1e-12)


def test_positive_class_and_more_classes_with_probabilities() -> None:
    y, pred = ["no", "yes", "yes", "no", "yes"], ["no", "yes", "no", "no", "yes"]
    got, _ = classification_metrics(y, pred, positive="no")
    assert got["precision"] == pytest.approx(metrics.precision_score(y, pred, pos_label="no"))
    got, _ = classification_metrics(y, pred)  # the last class in sorted order
    assert got["recall"] == pytest.approx(metrics.recall_score(y, pred, pos_label="yes"))
    with pytest.raises(InvalidInput, match="positive class 'maybe'"):
        classification_metrics(y, pred, positive="maybe")
    proba = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6]]
    got, notes = classification_metrics([0, 1, 2, 0], [0, 1, 2, 2], proba, bins=10)
    assert got["roc_auc"] is None and notes["roc_auc"] == "ROC AUC is computed for two classes only"
    # top-class confidence against being right, each row in a bin of its own (a value on an
    # inner edge goes to the lower bin): |1-0.7| + |1-0.8| + |1-0.4| + |0-0.6| over 4 rows
    assert got["calibration_error"] == pytest.approx((0.3 + 0.2 + 0.6 + 0.6) / 4)


def test_one_class_in_the_labels_gives_no_auc_with_the_reason() -> None:
    got, notes = classification_metrics([1, 1, 1], [1, 0, 1], [0.9, 0.2, 0.7])
    assert got["roc_auc"] is None and notes["roc_auc"] == "the labels hold one class only"


def test_calibration_of_a_perfectly_calibrated_bin_is_zero() -> None:
    assert expected_calibration_error([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5], 10) == 0.0
    assert expected_calibration_error([1, 1], [0.25, 0.25], 4) == pytest.approx(0.75)


def test_regression_figures_equal_sklearn() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(size=200)
    pred = y + rng.normal(scale=0.3, size=200)
    got = regression_metrics(y.tolist(), pred.tolist())
    assert got["mae"] == pytest.approx(metrics.mean_absolute_error(y, pred), abs=1e-12)
    rmse = float(np.sqrt(metrics.mean_squared_error(y, pred)))
    assert got["rmse"] == pytest.approx(rmse, abs=1e-12)


def _joined(n: int, t0: float = 1_700_000_000.0) -> tuple[pa.Table, Any, Any, Any]:
    """A table shaped like serving.feedback.joined: log columns, then label columns."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, n)
    prob = rng.random(n)
    pred = (prob > 0.5).astype(np.int64)
    ts = t0 + np.arange(n) * 10.0  # one row every 10 s
    table = pa.table(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "row": pa.array([0] * n, pa.int32()),
            "ts": pa.array((ts * 1e6).astype(np.int64), pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "in_region": ["eu" if i % 3 else "us" for i in range(n)],
            "out_prediction": pa.array(pred, pa.int64()),
            "out_probability": pa.array(prob, pa.float64()),
            "label": [json.dumps(int(v)) for v in y],
            "label_value": pa.array(y.astype(np.float64)),
        }
    )
    return table, y, pred, prob


def test_windows_and_slices_equal_sklearn_on_their_rows() -> None:
    table, y, pred, prob = _joined(305)
    report = performance(table, "classification", window_s=1000, slice_by="in_region", min_rows=20)
    assert report.overall.rows == 305
    assert report.overall.metrics["roc_auc"] == pytest.approx(
        metrics.roc_auc_score(y, prob), abs=1e-12
    )
    starts = np.floor((1_700_000_000.0 + np.arange(305) * 10.0) / 1000) * 1000
    assert [w.start for w in report.windows] == sorted(set(starts.tolist()))
    for w in report.windows:
        rows = starts == w.start
        assert w.rows == int(rows.sum())
        if w.rows < 20:
            assert w.insufficient == f"{w.rows} labelled rows, fewer than the 20 needed"
            assert w.metrics == {}
            continue
        assert w.metrics["f1"] == pytest.approx(metrics.f1_score(y[rows], pred[rows]), abs=1e-12)
    assert any(w.insufficient for w in report.windows)  # the last window is short
    regions = np.array(["eu" if i % 3 else "us" for i in range(305)])
    assert [s.value for s in report.slices] == ["eu", "us"]
    for s in report.slices:
        rows = regions == s.value
        assert s.metrics["accuracy"] == pytest.approx(
            metrics.accuracy_score(y[rows], pred[rows]), abs=1e-12
        )
    assert json.dumps(report.to_dict())  # plain data for the API and the CLI


def test_a_regressor_over_the_joined_table() -> None:
    table, y, _, prob = _joined(100)
    table = table.set_column(4, "out_prediction", pa.array(prob))
    report = performance(table, "regression", min_rows=1)
    assert report.overall.metrics["mae"] == pytest.approx(
        metrics.mean_absolute_error(y, prob), abs=1e-12
    )


def test_too_few_rows_and_bad_requests_are_said() -> None:
    table, *_ = _joined(10)
    report = performance(table, "classification")
    assert report.overall.insufficient == "10 labelled rows, fewer than the 30 needed"
    empty = performance(pa.table({}), "classification")
    assert empty.overall.rows == 0 and empty.overall.insufficient
    with pytest.raises(InvalidInput, match="no column 'nope' to slice by"):
        performance(table, "classification", slice_by="nope")
    with pytest.raises(InvalidInput, match="the log's outputs are none"):
        performance(table.drop_columns(["out_prediction"]), "classification")
    renamed = table.rename_columns(
        ["out_label" if n == "out_prediction" else n for n in table.column_names]
    )
    assert performance(renamed, "classification", min_rows=1).overall.rows == 10
    two = renamed.append_column("out_other", renamed.column("out_label"))
    with pytest.raises(InvalidInput, match="outputs are out_label, out_other"):
        performance(two, "classification")
    with pytest.raises(InvalidInput, match="window_s must be positive"):
        performance(table, "classification", window_s=0)
