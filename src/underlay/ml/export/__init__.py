"""Edge export: a scikit-learn or PyTorch model as ONNX, optionally int8, with a report.

``export_model(model, example, held_out=..., options=ExportOptions(quantize="int8"))``
converts (:mod:`.convert`), quantises (:mod:`.quantize`), measures size, latency and the
metric against the original on the same rows (:mod:`.measure`) and refuses an export whose
metric moved beyond the tolerance (:mod:`.report`). The result holds the ONNX bytes and the
report: the files a registry version with flavor ``onnx`` stores. See docs/export.md.
"""

from __future__ import annotations

from underlay.ml.export.convert import UnsupportedModel
from underlay.ml.export.exporter import (
    MODEL_FILE,
    REPORT_FILE,
    ExportOptions,
    ExportResult,
    HeldOut,
    export_model,
    feature_matrix,
    held_out_from_arrow,
)
from underlay.ml.export.quantize import QUANTIZE_MODES, Quantize
from underlay.ml.export.report import ExportRefused, ExportReport

__all__ = [
    "MODEL_FILE",
    "QUANTIZE_MODES",
    "REPORT_FILE",
    "ExportOptions",
    "ExportRefused",
    "ExportReport",
    "ExportResult",
    "HeldOut",
    "Quantize",
    "UnsupportedModel",
    "export_model",
    "feature_matrix",
    "held_out_from_arrow",
]
