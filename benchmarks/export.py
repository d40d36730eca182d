"""Edge export: size and latency of the float and int8 ONNX models against the original.

Trains three models on scikit-learn's bundled breast-cancer data (a scaler + logistic
regression pipeline, a random forest, and a PyTorch MLP of two hidden layers), exports each
with :func:`underlay.ml.export.export_model` (float, then int8 dynamic), and prints, per
variant, the size, p50/p95 latency of one ``predict`` on a single row and on a batch of
``--batch`` rows (onnxruntime CPU, one thread; the original's own ``predict`` or ``forward``
on the same rows in the same process), the held-out accuracy, and the ratios to the original.
No target is set: the figures say what int8 buys (or does not) for each kind of model.

    python benchmarks/export.py --runs 200 --batch 256 --hidden 256
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from underlay.ml.export import ExportOptions, HeldOut, export_model


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    mean, std = x[:400].mean(axis=0), x[:400].std(axis=0)
    x = (x - mean) / std
    return x[:400], y[:400], x[400:], y[400:]


def models(x: np.ndarray, y: np.ndarray, hidden: int) -> list[tuple[str, Any]]:
    import torch
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    forest = RandomForestClassifier(n_estimators=101, max_depth=8, random_state=0).fit(x, y)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 2),
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    rows, labels = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)
    for _ in range(100):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(rows), labels).backward()
        optimiser.step()
    return [("sklearn pipeline", pipeline), ("sklearn forest", forest), ("torch mlp", net.eval())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    x, y, hx, hy = data()
    options = ExportOptions(quantize="int8", runs=args.runs, batch_rows=args.batch, tolerance=5)
    print(
        f"{'model':18} {'variant':10} {'bytes':>9} {'size x':>7} {'1-row p50':>10} "
        f"{'p95':>8} {'batch p50':>10} {'p95':>8} {'latency x':>9} {'accuracy':>8}"
    )
    for name, model in models(x, y, args.hidden):
        report = export_model(model, x[:8], held_out=HeldOut(hx, hy), options=options).report
        first = report.variants[0]
        for v in report.variants:
            print(
                f"{name:18} {v.name:10} {v.size_bytes:9d} {v.size_bytes / first.size_bytes:7.3f} "
                f"{v.single_row.p50_ms:8.4f}ms {v.single_row.p95_ms:6.4f}ms "
                f"{v.batch.p50_ms:8.4f}ms {v.batch.p95_ms:6.4f}ms "
                f"{v.batch.p50_ms / first.batch.p50_ms:9.3f} {v.metric:7.2f}%"
            )
        float_onnx, int8 = report.variants[1], report.variants[2]
        print(
            f"{name:18} int8/float size {int8.size_bytes / float_onnx.size_bytes:.3f}, "
            f"batch latency {int8.batch.p50_ms / float_onnx.batch.p50_ms:.3f}, "
            f"single-row latency {int8.single_row.p50_ms / float_onnx.single_row.p50_ms:.3f}, "
            f"int8 tensors {report.int8_tensors}"
        )


if __name__ == "__main__":
    main()
