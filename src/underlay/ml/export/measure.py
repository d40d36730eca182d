"""What the export report measures: predictions, the metric, latency and size.

Latency is wall time per ``predict`` call (``time.perf_counter_ns``) over a fixed number of
runs after a warm-up, on one row and on one batch, reported as p50 and p95. onnxruntime runs
on the CPU provider with a fixed thread count (one by default) so that figures from a shared
machine compare like with like; the original model runs in the same process on the same rows.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from underlay.ml.export.convert import Converted, Kind, Task

Predict = Callable[[np.ndarray], np.ndarray]


def original_predict(model: Any, kind: Kind, task: Task) -> Predict:
    """The original model's predictions: class labels or values, one per row."""
    if kind == "torch":
        import torch

        def predict_torch(rows: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = model(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)))
            return _decode(out.numpy(), task)

        return predict_torch

    def predict_sklearn(rows: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            # fitted on a data frame, asked with an array of the same columns in order
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            predicted: np.ndarray = np.asarray(model.predict(rows)).ravel()
            return predicted

    return predict_sklearn


def session(onnx: bytes, threads: int) -> Any:
    """An onnxruntime CPU session over ``onnx``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: shape-merge notices are not the user's
    return ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])


def onnx_predict(sess: Any, converted: Converted) -> Predict:
    """The exported model's predictions, decoded like the original's."""

    def predict(rows: np.ndarray) -> np.ndarray:
        feed = {converted.input_name: np.ascontiguousarray(rows, dtype=np.float32)}
        out = np.asarray(sess.run(None, feed)[0])
        if converted.kind == "sklearn":
            return out.ravel()  # skl2onnx's first output is the label or the value
        return _decode(out, converted.task)

    return predict


def _decode(out: np.ndarray, task: Task) -> np.ndarray:
    if task == "classification" and out.ndim == 2 and out.shape[1] > 1:
        return np.asarray(out.argmax(axis=1))
    if task == "classification":  # one logit: positive when above zero
        return (out.ravel() > 0).astype(np.int64)
    return out.ravel()


def metric(task: Task, predicted: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy in percent for classification, RMSE for regression."""
    if task == "classification":
        return float(np.mean(predicted == labels) * 100.0)
    diff = predicted.astype(np.float64) - labels.astype(np.float64)
    return float(math.sqrt(float(np.mean(diff * diff))))


def change(task: Task, value: float, original: float, labels: np.ndarray) -> float:
    """How far ``value`` is from ``original``: accuracy points, or for regression the RMSE
    difference as a percentage of the labels' standard deviation."""
    if task == "classification":
        return value - original
    spread = float(np.std(labels.astype(np.float64)))
    return (value - original) / (spread if spread > 0 else 1.0) * 100.0


def latency(predict: Predict, rows: np.ndarray, runs: int, warmup: int) -> tuple[float, float]:
    """p50 and p95 wall time of ``predict(rows)`` in milliseconds."""
    for _ in range(warmup):
        predict(rows)
    times = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        start = time.perf_counter_ns()
        predict(rows)
        times[i] = time.perf_counter_ns() - start
    p50, p95 = np.percentile(times, [50, 95]) / 1e6
    return float(p50), float(p95)


def source_size(model: Any, kind: Kind) -> tuple[int, str]:
    """The original model's size in bytes as the registry would store it, and how measured."""
    if kind == "torch":
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        try:
            from safetensors.torch import save

            return len(save(tensors)), "safetensors"
        except (ImportError, RuntimeError, ValueError):  # shared tensors, or no safetensors
            return sum(t.numel() * t.element_size() for t in tensors.values()), "tensor bytes"
    try:
        import skops.io

        return len(skops.io.dumps(model)), "skops"
    except ImportError:
        import pickle  # dumping only measures the size; nothing is loaded

        return len(pickle.dumps(model)), "pickle"
