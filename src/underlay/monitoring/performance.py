"""Performance of a deployed model from ground truth: its logged predictions joined with the
labels sent as feedback (:func:`underlay.serving.feedback.joined`), overall, per fixed time
window and per slice (the values of one column).

Classifiers get accuracy; precision, recall and F1 (for two classes, of the positive class,
plus their macro averages; for more, macro averages: the unweighted mean over the classes seen
in labels or predictions, a class never predicted counting 0 precision); ROC AUC for two
classes when scores are logged (the rank statistic, ties averaged; without scores, or with one
class in the labels, it says why it cannot be computed); and the expected calibration error
over ``bins`` equal-width probability bins (each bin's ``|fraction positive - mean
probability|`` weighted by its share of rows; for more classes, of the top class's probability
against being right). Regressors get RMSE and MAE. Numbers only from numpy.

A window or slice with fewer than ``min_rows`` labelled rows reports ``insufficient`` (how
many rows it had and how many it needs) instead of figures that would be noise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from underlay.errors import InvalidInput

Task = Literal["classification", "regression"]

PREDICTION = "out_prediction"
SCORE_COLUMNS = ("out_probability", "out_probabilities", "out_proba", "out_score", "out_scores")
DEFAULT_MIN_ROWS = 30
DEFAULT_BINS = 10


@dataclass(frozen=True)
class Slice:
    """The figures of one group of rows: a window (``start``), a slice value, or all rows."""

    rows: int
    metrics: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # why a metric is missing
    insufficient: str | None = None
    start: float | None = None  # windows: the window's start, seconds since the epoch
    value: Any = None  # slices: the column's value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows, "metrics": self.metrics, "notes": self.notes}
        if self.insufficient is not None:
            out["insufficient"] = self.insufficient
        if self.start is not None:
            out["start"] = self.start
        if self.value is not None:
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class PerformanceReport:
    task: Task
    overall: Slice
    windows: list[Slice]
    slices: list[Slice]
    window_s: float | None
    slice_by: str | None
    min_rows: int
    bins: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "min_rows": self.min_rows,
            "calibration_bins": self.bins,
            "overall": self.overall.to_dict(),
            "window_s": self.window_s,
            "windows": [w.to_dict() for w in self.windows],
            "slice_by": self.slice_by,
            "slices": [s.to_dict() for s in self.slices],
        }


# -- classification ----------------------------------------------------------------------------


def _key(value: Any) -> tuple[int, float | str]:
    """A class as a sortable key: numbers (bools as 0/1) compare as numbers, the rest as text,
    so a label sent as ``1`` matches a prediction logged as ``1.0``."""
    if isinstance(value, bool | int | float | np.integer | np.floating):
        return (0, float(value))
    return (1, str(value))


def _encode(truth: Sequence[Any], predicted: Sequence[Any]) -> tuple[list[Any], Any, Any]:
    keys = sorted({_key(v) for v in truth} | {_key(v) for v in predicted})
    index = {k: i for i, k in enumerate(keys)}
    y = np.fromiter((index[_key(v)] for v in truth), np.int64, len(truth))
    p = np.fromiter((index[_key(v)] for v in predicted), np.int64, len(predicted))
    return [k[1] for k in keys], y, p


def _prf(y: Any, p: Any, cls: int) -> tuple[float, float, float]:
    tp = float(np.sum((p == cls) & (y == cls)))
    predicted, actual = float(np.sum(p == cls)), float(np.sum(y == cls))
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * tp / (predicted + actual) if predicted + actual else 0.0
    return precision, recall, f1


def roc_auc(y_binary: Any, score: Any) -> float | None:
    """Area under the ROC curve from the ranks of ``score`` (ties share their mean rank);
    None when the labels hold one class only."""
    y = np.asarray(y_binary, dtype=bool)
    positives = int(y.sum())
    negatives = y.size - positives
    if not positives or not negatives:
        return None
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    ranked = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], s.size]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # 1-based mean ranks
    u = ranks[y].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def expected_calibration_error(hit: Any, probability: Any, bins: int) -> float:
    """ECE over ``bins`` equal-width bins of [0, 1] (a probability on an inner edge goes to
    the lower bin): the bins' ``|mean hit - mean probability|`` weighted by their rows."""
    prob = np.asarray(probability, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ids = np.searchsorted(edges[1:-1], prob)
    total = np.bincount(ids, minlength=bins).astype(np.float64)
    gap = np.abs(
        np.bincount(ids, weights=np.asarray(hit, dtype=np.float64), minlength=bins)
        - np.bincount(ids, weights=prob, minlength=bins)
    )
    return float(gap.sum() / total.sum())


def _scores(values: Sequence[Any], n_classes: int) -> Any:
    """Scores as an array: (n,) for one number per row, (n, k) for a list per row."""
    if values and isinstance(values[0], list | tuple):
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] < n_classes:
            raise InvalidInput(
                f"scores hold {arr.shape[-1]} values per row for {n_classes} classes"
            )
        return arr
    return np.asarray(values, dtype=np.float64)


def classification_metrics(
    truth: Sequence[Any],
    predicted: Sequence[Any],
    scores: Sequence[Any] | None = None,
    *,
    positive: Any = None,
    bins: int = DEFAULT_BINS,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Figures and notes (why a figure is None) for labels ``truth`` and ``predicted``
    classes; ``scores``: per row, the positive class's probability (two classes) or a list of
    probabilities per class in sorted class order (as scikit-learn's ``predict_proba``)."""
    classes, y, p = _encode(truth, predicted)
    metrics: dict[str, float | None] = {"accuracy": float(np.mean(y == p))}
    notes: dict[str, str] = {}
    per_class = [_prf(y, p, c) for c in range(len(classes))]
    for i, name in enumerate(("precision", "recall", "f1")):
        metrics[f"{name}_macro"] = float(np.mean([f[i] for f in per_class]))
    binary = len(classes) <= 2
    pos = _positive(classes, positive) if binary else None
    if pos is not None:
        for name, value in zip(("precision", "recall", "f1"), _prf(y, p, pos), strict=True):
            metrics[name] = value
    metrics["roc_auc"] = metrics["calibration_error"] = None
    if scores is None:
        notes["roc_auc"] = notes["calibration_error"] = "no scores or probabilities are logged"
        return metrics, notes
    s = _scores(scores, len(classes))
    if pos is not None:
        prob = s[:, pos] if s.ndim == 2 else s
        metrics["roc_auc"] = roc_auc(y == pos, prob)
        if metrics["roc_auc"] is None:
            notes["roc_auc"] = "the labels hold one class only"
        metrics["calibration_error"] = expected_calibration_error(y == pos, prob, bins)
    else:
        notes["roc_auc"] = "ROC AUC is computed for two classes only"
        if s.ndim == 2:
            top = np.argmax(s, axis=1)
            hit = (top == y) & (top < len(classes))
            metrics["calibration_error"] = expected_calibration_error(hit, s.max(axis=1), bins)
        else:
            notes["calibration_error"] = "needs a probability per class"
    return metrics, notes


def _positive(classes: list[Any], positive: Any) -> int:
    if positive is not None:
        key = _key(positive)
        keys = [_key(c) for c in classes]
        if key not in keys:
            raise InvalidInput(
                f"the positive class {positive!r} is in neither labels nor predictions"
            )
        return keys.index(key)
    if 1.0 in classes:
        return classes.index(1.0)
    return len(classes) - 1


# -- regression --------------------------------------------------------------------------------


def regression_metrics(truth: Sequence[Any], predicted: Sequence[Any]) -> dict[str, float | None]:
    y = np.asarray(truth, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    error = p - y
    return {
        "rmse": float(np.sqrt(np.mean(error * error))),
        "mae": float(np.mean(np.abs(error))),
    }


# -- over a joined table -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Columns:
    truth: list[Any]
    predicted: list[Any]
    scores: list[Any] | None
    ts: Any  # seconds since the epoch, float64
    slice_values: list[Any] | None


def _label(value_json: str | None, number: float | None, task: Task) -> Any:
    if task == "regression" or number is not None:
        return number
    return None if value_json is None else json.loads(value_json)


def _prediction_column(names: list[str]) -> str:
    """``out_prediction`` when logged, else the one output that is not a score."""
    if PREDICTION in names:
        return PREDICTION
    outputs = [n for n in names if n.startswith("out_") and n not in SCORE_COLUMNS]
    if len(outputs) != 1:
        found = ", ".join(outputs) or "none"
        raise InvalidInput(f"name the prediction column: the log's outputs are {found}")
    return outputs[0]


def _columns(
    table: pa.Table, task: Task, prediction: str | None, score: str | None, slice_by: str | None
) -> _Columns:
    names = set(table.column_names)
    prediction = prediction or _prediction_column(table.column_names)
    for needed in ("label", "label_value", "ts", prediction):
        if needed not in names:
            raise InvalidInput(f"the joined log has no column {needed!r}")
    if score is None:
        score = next((c for c in SCORE_COLUMNS if c in names), None)
    elif score not in names:
        raise InvalidInput(f"the joined log has no score column {score!r}")
    if slice_by is not None and slice_by not in names:
        raise InvalidInput(f"the joined log has no column {slice_by!r} to slice by")
    labels = table.column("label").to_pylist()
    numbers = table.column("label_value").to_pylist()
    truth = [_label(j, n, task) for j, n in zip(labels, numbers, strict=True)]
    predicted = table.column(prediction).to_pylist()
    keep = [
        i
        for i, (t, p) in enumerate(zip(truth, predicted, strict=True))
        if t is not None and p is not None and not (isinstance(p, float) and math.isnan(p))
    ]
    stamps = table.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False) / 1e6
    score_values = table.column(score).to_pylist() if score is not None else None
    if score_values is not None and any(score_values[i] is None for i in keep):
        score_values = None  # a score missing for some rows: none are used
    return _Columns(
        truth=[truth[i] for i in keep],
        predicted=[predicted[i] for i in keep],
        scores=[score_values[i] for i in keep] if score_values is not None else None,
        ts=stamps[keep] if keep else np.zeros(0),
        slice_values=[table.column(slice_by)[i].as_py() for i in keep] if slice_by else None,
    )


def _group(
    cols: _Columns,
    rows: list[int],
    task: Task,
    min_rows: int,
    bins: int,
    positive: Any,
    **where: Any,
) -> Slice:
    if len(rows) < min_rows:
        return Slice(
            len(rows),
            insufficient=f"{len(rows)} labelled rows, fewer than the {min_rows} needed",
            **where,
        )
    truth = [cols.truth[i] for i in rows]
    predicted = [cols.predicted[i] for i in rows]
    if task == "regression":
        return Slice(len(rows), regression_metrics(truth, predicted), **where)
    scores = [cols.scores[i] for i in rows] if cols.scores is not None else None
    metrics, notes = classification_metrics(truth, predicted, scores, positive=positive, bins=bins)
    return Slice(len(rows), metrics, notes, **where)


def performance(
    table: pa.Table,
    task: Task,
    *,
    prediction: str | None = None,
    score: str | None = None,
    window_s: float | None = None,
    slice_by: str | None = None,
    min_rows: int = DEFAULT_MIN_ROWS,
    bins: int = DEFAULT_BINS,
    positive: Any = None,
) -> PerformanceReport:
    """The report over ``table`` (rows of :func:`underlay.serving.feedback.joined`): overall,
    per window of ``window_s`` seconds aligned to multiples of it since the epoch (windows
    with no rows are left out), per value of column ``slice_by``. The prediction column is
    ``prediction``, else ``out_prediction``, else the log's one output that is not a score
    column; the score column is ``score``, else the first of :data:`SCORE_COLUMNS` the log
    has. Rows with a null label or prediction are left out (for a classifier, a label that
    is not a number is its JSON)."""
    if task not in ("classification", "regression"):
        raise InvalidInput(f"task must be classification or regression, not {task!r}")
    if window_s is not None and not window_s > 0:
        raise InvalidInput("window_s must be positive")
    if not 1 <= bins <= 1000:
        raise InvalidInput("bins must be between 1 and 1000")
    min_rows = max(int(min_rows), 1)
    if table.num_columns == 0:  # joined() before there is a log and labels
        empty = Slice(0, insufficient=f"0 labelled rows, fewer than the {min_rows} needed")
        return PerformanceReport(task, empty, [], [], window_s, slice_by, min_rows, bins)
    cols = _columns(table, task, prediction, score, slice_by)
    args = (task, min_rows, bins, positive)
    overall = _group(cols, list(range(len(cols.truth))), *args)
    windows: list[Slice] = []
    if window_s is not None and len(cols.truth):
        starts = np.floor(cols.ts / window_s) * window_s
        for start in np.unique(starts):
            rows = np.flatnonzero(starts == start).tolist()
            windows.append(_group(cols, rows, *args, start=float(start)))
    slices: list[Slice] = []
    if cols.slice_values is not None:
        groups: dict[Any, list[int]] = {}
        for i, value in enumerate(cols.slice_values):
            groups.setdefault(value, []).append(i)
        for value in sorted(
            groups, key=lambda v: (v is None, _key(v) if v is not None else (0, 0.0))
        ):
            slices.append(_group(cols, groups[value], *args, value=value))
    return PerformanceReport(task, overall, windows, slices, window_s, slice_by, min_rows, bins)


def deployment_performance(
    session: Any,
    store: Any,
    project_id: int,
    deployment: str,
    task: Task,
    *,
    since: float | None = None,
    until: float | None = None,
    **options: Any,
) -> PerformanceReport:
    """:func:`performance` over the deployment's joined log and feedback from ``since`` to
    ``until`` (seconds since the epoch)."""
    from underlay.serving.feedback import joined

    table = joined(session, store, project_id, deployment, since=since, until=until)
    return performance(table, task, **options)
