"""The export report stored with an exported model version, and the accuracy gate."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from underlay.errors import InvalidInput
from underlay.ml.export.convert import Kind, Task
from underlay.ml.export.quantize import Quantize

Metric = Literal["accuracy", "rmse"]


class Latency(BaseModel):
    p50_ms: float = Field(description="median wall time of one predict call, milliseconds")
    p95_ms: float = Field(description="95th percentile wall time of one predict call")


class Variant(BaseModel):
    """One model measured on the same rows: the original, the float ONNX, the int8 ONNX."""

    name: Literal["original", "onnx", "onnx-int8", "onnx-int8-static"]
    size_bytes: int
    single_row: Latency
    batch: Latency
    metric: float = Field(description="accuracy in percent, or RMSE, on the evaluation rows")
    change: float = Field(description="metric change against the original, in change_unit")


class ExportReport(BaseModel):
    """Size, latency and accuracy of an export against its original (docs/export.md)."""

    format: Literal["onnx"] = "onnx"
    source: str = Field(description="the original model, e.g. Pipeline(StandardScaler, SVC)")
    source_kind: Kind
    source_size_method: str = Field(description="how the original's size was measured")
    task: Task
    quantize: Quantize
    opset: int
    input_name: str
    features: int
    feature_names: list[str] | None = None
    metric: Metric
    change_unit: Literal["accuracy points", "% of label std"]
    evaluated_on: Literal["held-out", "input-example"]
    evaluation_rows: int
    label: str | None = None
    tolerance: float
    change: float = Field(description="metric change of the exported model (the last variant)")
    passed: bool
    int8_tensors: int = Field(description="weight tensors stored as 8-bit integers")
    size_ratio: float = Field(description="exported size / original size")
    latency_ratio: float = Field(description="exported p50 / original p50, on a batch")
    latency_runs: int
    latency_warmup: int
    batch_rows: int
    threads: int
    variants: list[Variant]
    notes: list[str] = Field(default_factory=list)


class ExportRefused(InvalidInput):
    """The export changed accuracy beyond the tolerance; nothing was registered.

    ``extra["report"]`` holds the full report, so the CLI and the API can show it.
    """


def gate(report: ExportReport) -> None:
    """Refuse ``report``'s export when its change is beyond the tolerance."""
    if report.passed:
        return
    unit = "points" if report.metric == "accuracy" else "% of the label's std"
    raise ExportRefused(
        f"export refused: {report.metric} changed by {report.change:+.3f} {unit} against the "
        f"original {report.source} (tolerance {report.tolerance:g}); nothing was registered",
        report=report.model_dump(mode="json"),
    )
