"""``export_model``: convert, quantise, measure against the original, gate.

The original model is the reference. Every variant (original, float ONNX, quantised ONNX)
predicts the same evaluation rows: the held-out table when one is given, else the input
example labelled with the original's own predictions (so the change is pure export error).
The exported model is the last variant; its change decides the gate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from underlay.errors import InvalidInput
from underlay.ml.export import measure
from underlay.ml.export.convert import Converted, Task, as_features, convert
from underlay.ml.export.quantize import QUANTIZE_MODES, Quantize, int8_tensors, quantize
from underlay.ml.export.report import ExportReport, Latency, Variant, gate

MODEL_FILE = "model.onnx"
REPORT_FILE = "export_report.json"


@dataclass(frozen=True)
class HeldOut:
    """Rows to evaluate on: features (rows x features) and their true labels."""

    features: np.ndarray
    labels: np.ndarray
    label: str | None = None
    feature_names: list[str] | None = None


@dataclass(frozen=True)
class ExportOptions:
    quantize: Quantize = "none"
    #: largest accepted change: accuracy points, or RMSE change in % of the labels' std
    tolerance: float = 1.0
    runs: int = 100
    warmup: int = 10
    batch_rows: int = 256
    threads: int = 1
    #: classification or regression; inferred when None (see docs/export.md)
    task: Task | None = None

    def check(self) -> None:
        if not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise InvalidInput(f"tolerance must be a number of points >= 0, not {self.tolerance:g}")
        if self.quantize not in QUANTIZE_MODES:
            raise InvalidInput(
                f"unknown quantisation {self.quantize!r}: use one of {', '.join(QUANTIZE_MODES)}"
            )
        for name in ("runs", "batch_rows", "threads"):
            if not 1 <= getattr(self, name) <= 100_000:
                raise InvalidInput(f"{name} must be between 1 and 100000")
        if not 0 <= self.warmup <= 100_000:
            raise InvalidInput("warmup must be between 0 and 100000")


@dataclass(frozen=True)
class ExportResult:
    """An exported model ready to register as a version with flavor ``onnx``."""

    onnx: bytes
    report: ExportReport
    flavor: str = "onnx"

    def artifacts(self) -> dict[str, bytes]:
        """The files to store with the version: the model and its report."""
        report = json.dumps(self.report.model_dump(mode="json"), indent=2, sort_keys=True)
        return {MODEL_FILE: self.onnx, REPORT_FILE: report.encode() + b"\n"}

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, data in self.artifacts().items():
            path = directory / name
            path.write_bytes(data)
            written.append(path)
        return written


def held_out_from_arrow(table: Any, label: str, features: list[str] | None = None) -> HeldOut:
    """A held-out set from an Arrow table: ``label`` and the numeric feature columns
    (``features`` in that order, else every other column in table order)."""
    names = list(table.column_names)
    if label not in names:
        raise InvalidInput(f"label column {label!r} is not in the table ({', '.join(names)})")
    columns = features if features is not None else [n for n in names if n != label]
    rows = feature_matrix(table, columns)
    labels = table.column(label).to_numpy(zero_copy_only=False)
    return HeldOut(features=rows, labels=labels, label=label, feature_names=columns)


def feature_matrix(table: Any, columns: list[str]) -> np.ndarray:
    """The numeric ``columns`` of an Arrow table side by side (rows x features, float64)."""
    import pyarrow.types as pat

    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InvalidInput(f"feature columns missing from the table: {', '.join(missing)}")
    if table.num_rows == 0 or not columns:
        raise InvalidInput("the table has no rows or no feature columns")
    for name in columns:
        kind = table.schema.field(name).type
        if not (pat.is_integer(kind) or pat.is_floating(kind) or pat.is_boolean(kind)):
            raise InvalidInput(
                f"feature column {name!r} is {kind}: export takes numeric feature columns"
            )
    return np.column_stack(
        [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in columns]
    )


def export_model(
    model: Any,
    example: Any,
    *,
    held_out: HeldOut | None = None,
    calibration: np.ndarray | None = None,
    options: ExportOptions | None = None,
) -> ExportResult:
    """``model`` (scikit-learn or PyTorch) as ONNX with its report; raises
    :class:`ExportRefused` when the export changes the metric beyond the tolerance."""
    opts = options or ExportOptions()
    opts.check()
    if opts.quantize == "int8-static" and (calibration is None or len(calibration) == 0):
        raise InvalidInput(
            "int8-static quantisation needs calibration rows (a calibration table); "
            "use int8 (dynamic) without one"
        )
    rows = as_features(example)
    converted = convert(model, rows, opts.task)
    original = measure.original_predict(model, converted.kind, converted.task)
    if held_out is not None:
        _check_width(held_out.features, rows.shape[1], "held-out table")
        features, labels = held_out.features, held_out.labels
    else:
        features, labels = rows, original(rows)
    if calibration is not None:
        _check_width(calibration, rows.shape[1], "calibration table")
    final = quantize(
        converted.onnx,
        opts.quantize,
        None if calibration is None else np.asarray(calibration, np.float32),
        converted.input_name,
    )
    report = _report(model, converted, final, features, labels, held_out, opts)
    gate(report)
    return ExportResult(onnx=final, report=report)


def _check_width(rows: np.ndarray, width: int, what: str) -> None:
    if rows.ndim != 2 or rows.shape[1] != width:
        raise InvalidInput(
            f"the {what} has {rows.shape[-1] if rows.ndim else 0} feature columns; the model "
            f"takes {width}"
        )


def _report(
    model: Any,
    converted: Converted,
    final: bytes,
    features: np.ndarray,
    labels: np.ndarray,
    held_out: HeldOut | None,
    opts: ExportOptions,
) -> ExportReport:
    task = converted.task
    original = measure.original_predict(model, converted.kind, task)
    size, size_method = measure.source_size(model, converted.kind)
    batch = np.resize(features, (opts.batch_rows, features.shape[1]))
    models: list[tuple[str, int, measure.Predict]] = [("original", size, original)]
    models.append(("onnx", len(converted.onnx), _onnx(converted.onnx, converted, opts)))
    if opts.quantize != "none":
        name = "onnx-int8" if opts.quantize == "int8" else "onnx-int8-static"
        models.append((name, len(final), _onnx(final, converted, opts)))
    variants = _measure(models, features, labels, batch, task, opts)
    exported, first = variants[-1], variants[0]
    eight_bit = int8_tensors(final) if opts.quantize != "none" else 0
    notes = []
    if opts.quantize != "none" and eight_bit == 0:
        notes.append(
            "no operator of this model has an int8 kernel in onnxruntime (tree ensembles and "
            "ai.onnx.ml linear operators stay float): the quantised model equals the float one"
        )
    return ExportReport(
        source=converted.description,
        source_kind=converted.kind,
        source_size_method=size_method,
        task=task,
        quantize=opts.quantize,
        opset=converted.opset,
        input_name=converted.input_name,
        features=features.shape[1],
        feature_names=held_out.feature_names if held_out else None,
        metric="accuracy" if task == "classification" else "rmse",
        change_unit="accuracy points" if task == "classification" else "% of label std",
        evaluated_on="held-out" if held_out is not None else "input-example",
        evaluation_rows=len(features),
        label=held_out.label if held_out else None,
        tolerance=opts.tolerance,
        change=exported.change,
        passed=abs(exported.change) <= opts.tolerance,
        int8_tensors=eight_bit,
        size_ratio=exported.size_bytes / max(first.size_bytes, 1),
        latency_ratio=exported.batch.p50_ms / max(first.batch.p50_ms, 1e-9),
        latency_runs=opts.runs,
        latency_warmup=opts.warmup,
        batch_rows=opts.batch_rows,
        threads=opts.threads,
        variants=variants,
        notes=notes,
    )


def _measure(
    models: list[tuple[str, int, measure.Predict]],
    features: np.ndarray,
    labels: np.ndarray,
    batch: np.ndarray,
    task: Task,
    opts: ExportOptions,
) -> list[Variant]:
    """Each model's metric and latency on the same rows; the first is the reference."""
    base = measure.metric(task, models[0][2](features), labels)
    variants = []
    for name, nbytes, predict in models:
        value = measure.metric(task, predict(features), labels)
        single = measure.latency(predict, features[:1], opts.runs, opts.warmup)
        many = measure.latency(predict, batch, opts.runs, opts.warmup)
        variants.append(
            Variant(
                name=name,
                size_bytes=nbytes,
                single_row=Latency(p50_ms=single[0], p95_ms=single[1]),
                batch=Latency(p50_ms=many[0], p95_ms=many[1]),
                metric=value,
                change=measure.change(task, value, base, labels),
            )
        )
    return variants


def _onnx(onnx: bytes, converted: Converted, opts: ExportOptions) -> measure.Predict:
    return measure.onnx_predict(measure.session(onnx, opts.threads), converted)
