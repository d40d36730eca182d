"""int8 quantisation of an ONNX model with onnxruntime.

Two modes:

- ``int8`` (dynamic): weights are stored as int8 and activations are quantised on the fly,
  row batch by row batch. Needs no data, so it is the default.
- ``int8-static``: weights and activations are quantised with scales calibrated on sample
  rows (QDQ format). Needs a calibration table; usually faster than dynamic on CPU because
  no scale is computed at run time.

Only the operators onnxruntime knows how to quantise change (MatMul, Gemm, Conv, ...). The
``ai.onnx.ml`` operators skl2onnx writes for trees and linear models (TreeEnsemble*,
LinearClassifier, LinearRegressor, Scaler) have no int8 kernels and stay float; the report
counts the int8 weight tensors so that an export where nothing changed says so.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from underlay.errors import InvalidInput

Quantize = Literal["none", "int8", "int8-static"]
#: the ai.onnx opset declared for a model that names none (as skl2onnx writes it)
DEFAULT_OPSET = 17
QUANTIZE_MODES: tuple[Quantize, ...] = ("none", "int8", "int8-static")


def quantize(
    onnx: bytes, mode: Quantize, calibration: np.ndarray | None = None, input_name: str = ""
) -> bytes:
    """``onnx`` quantised with ``mode`` (``none`` returns it unchanged)."""
    if mode == "none":
        return onnx
    if mode == "int8":
        return _run(onnx, lambda src, dst: _dynamic(src, dst))
    if mode == "int8-static":
        if calibration is None or len(calibration) == 0:
            raise InvalidInput(
                "int8-static quantisation needs calibration rows (a calibration table); "
                "use int8 (dynamic) without one"
            )
        rows = calibration
        return _run(onnx, lambda src, dst: _static(src, dst, rows, input_name))
    raise InvalidInput(f"unknown quantisation {mode!r}: use one of {', '.join(QUANTIZE_MODES)}")


def int8_tensors(onnx: bytes) -> int:
    """How many weight tensors of ``onnx`` are stored as 8-bit integers."""
    import onnx as onnx_lib

    model = onnx_lib.load_model_from_string(onnx)
    eight_bit = {onnx_lib.TensorProto.INT8, onnx_lib.TensorProto.UINT8}
    return sum(1 for t in model.graph.initializer if t.data_type in eight_bit)


def _run(onnx: bytes, step: Any) -> bytes:
    with tempfile.TemporaryDirectory(prefix="underlay-quant-") as tmp, _quiet_onnxruntime():
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(_with_default_domain(onnx))
        step(src, dst)
        return dst.read_bytes()


def _with_default_domain(onnx: bytes) -> bytes:
    # the quantiser needs exactly one ai.onnx opset entry; skl2onnx writes it twice for a
    # pipeline and omits it when every node is ai.onnx.ml (a lone LinearClassifier)
    import onnx as onnx_lib

    model = onnx_lib.load_model_from_string(onnx)
    versions: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        versions[domain] = max(versions.get(domain, 0), entry.version)
    versions.setdefault("", DEFAULT_OPSET)
    del model.opset_import[:]
    model.opset_import.extend(onnx_lib.helper.make_opsetid(d, v) for d, v in versions.items())
    return bytes(model.SerializeToString())


def _dynamic(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)


def _static(src: Path, dst: Path, rows: np.ndarray, input_name: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter(np.array_split(rows, max(1, len(rows) // 64)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch.astype(np.float32)}

    quantize_static(
        src,
        dst,
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def _from_onnxruntime(record: logging.LogRecord) -> bool:
    return "onnxruntime" not in record.pathname


@contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    # the quantiser logs a "consider pre-processing" advice on the root logger at every call;
    # a filter drops only onnxruntime's records, so other threads' logging is untouched
    root = logging.getLogger()
    root.addFilter(_from_onnxruntime)
    try:
        yield
    finally:
        root.removeFilter(_from_onnxruntime)
