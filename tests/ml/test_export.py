"""Edge export: conversion, quantisation, the report and the accuracy gate, on sklearn's
bundled datasets and a tiny PyTorch MLP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("skl2onnx")
pytest.importorskip("onnxruntime")

from underlay.errors import InvalidInput
from underlay.ml.export import (
    MODEL_FILE,
    REPORT_FILE,
    ExportOptions,
    ExportRefused,
    HeldOut,
    UnsupportedModel,
    export_model,
    held_out_from_arrow,
)

FAST = {"runs": 5, "warmup": 1, "batch_rows": 32}


def fast(**changes: Any) -> ExportOptions:
    return ExportOptions(**{**FAST, **changes})


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    return x[:400], y[:400], x[400:], y[400:]


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    return x[:340], y[:340], x[340:], y[340:]


def _onnx_predict(onnx: bytes, rows: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: rows.astype(np.float32)})[0])


def _classifiers() -> list[Any]:
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    return [
        make_pipeline(StandardScaler(), LogisticRegression()),
        DecisionTreeClassifier(max_depth=5, random_state=0),
        # an odd number of trees: two classes never tie on votes (see docs/export.md)
        RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0),
        GradientBoostingClassifier(n_estimators=15, random_state=0),
    ]


@pytest.mark.parametrize("index", range(4), ids=["pipeline-logreg", "tree", "forest", "gbm"])
def test_sklearn_classifiers_convert_and_predict_as_the_original(cancer: Any, index: int) -> None:
    x, y, hx, hy = cancer
    model = _classifiers()[index].fit(x, y)
    result = export_model(model, x[:5], held_out=HeldOut(hx, hy, label="target"), options=fast())
    labels = _onnx_predict(result.onnx, hx)
    assert np.mean(labels == model.predict(hx)) >= 0.99
    report = result.report
    assert report.task == "classification" and report.metric == "accuracy"
    assert report.passed and abs(report.change) <= 1.0
    assert [v.name for v in report.variants] == ["original", "onnx"]
    assert report.variants[0].metric == pytest.approx(np.mean(model.predict(hx) == hy) * 100)
    assert report.evaluated_on == "held-out" and report.evaluation_rows == len(hy)


def test_sklearn_regressors_convert_within_tolerance(diabetes: Any) -> None:
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, hx, hy = diabetes
    for model in (
        make_pipeline(StandardScaler(), Ridge()),
        RandomForestRegressor(n_estimators=10, max_depth=5, random_state=0),
        GradientBoostingRegressor(n_estimators=15, random_state=0),
    ):
        model.fit(x, y)
        result = export_model(model, x[:5], held_out=HeldOut(hx, hy), options=fast())
        values = _onnx_predict(result.onnx, hx).ravel()
        np.testing.assert_allclose(values, model.predict(hx), rtol=1e-4, atol=1e-3)
        assert result.report.metric == "rmse" and result.report.change_unit == "% of label std"
        assert result.report.passed and abs(result.report.change) < 0.01


@pytest.fixture(scope="module")
def mlp(cancer: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    x, y, hx, hy = cancer
    mean, std = x.mean(axis=0), x.std(axis=0)
    xs, hxs = ((x - mean) / std).astype(np.float32), ((hx - mean) / std).astype(np.float32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(30, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 2),
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(xs)), torch.from_numpy(y))
        loss.backward()
        optimiser.step()
    return net.eval(), xs, hxs, hy


@pytest.fixture(scope="module")
def mlp_onnx(mlp: Any) -> Any:
    net, xs, hxs, hy = mlp
    return export_model(net, xs[:4], held_out=HeldOut(hxs, hy), options=fast())


def test_torch_mlp_exports_with_a_dynamic_batch(mlp: Any, mlp_onnx: Any) -> None:
    import torch

    net, _xs, hxs, _hy = mlp
    with torch.no_grad():
        expected = net(torch.from_numpy(hxs)).numpy()
    np.testing.assert_allclose(_onnx_predict(mlp_onnx.onnx, hxs), expected, rtol=1e-4, atol=1e-4)
    # the batch axis is dynamic: one row and the whole held-out table both run
    assert _onnx_predict(mlp_onnx.onnx, hxs[:1]).shape == (1, 2)
    report = mlp_onnx.report
    assert report.source_kind == "torch" and report.task == "classification"
    assert report.passed and report.change == 0 and report.quantize == "none"


def test_torch_mlp_int8_is_smaller_and_within_tolerance(mlp: Any, mlp_onnx: Any) -> None:
    net, xs, hxs, hy = mlp
    result = export_model(net, xs[:4], held_out=HeldOut(hxs, hy), options=fast(quantize="int8"))
    report = result.report
    assert [v.name for v in report.variants] == ["original", "onnx", "onnx-int8"]
    assert report.variants[1].size_bytes == len(mlp_onnx.onnx)
    assert len(result.onnx) == report.variants[2].size_bytes < len(mlp_onnx.onnx)
    assert report.int8_tensors > 0
    assert report.passed and abs(report.change) <= 1.0
    assert _onnx_predict(result.onnx, hxs).shape == (len(hxs), 2)


def test_static_int8_needs_calibration_rows_and_uses_them(mlp: Any) -> None:
    net, xs, hxs, hy = mlp
    with pytest.raises(InvalidInput, match="int8-static quantisation needs calibration rows"):
        export_model(net, xs[:4], options=fast(quantize="int8-static"))
    result = export_model(
        net,
        xs[:4],
        held_out=HeldOut(hxs, hy),
        calibration=xs,
        options=fast(quantize="int8-static", tolerance=3.0),
    )
    assert result.report.variants[-1].name == "onnx-int8-static"
    assert result.report.int8_tensors > 0
    assert result.report.variants[-1].size_bytes < result.report.variants[1].size_bytes


def test_int8_on_a_model_without_int8_kernels_says_nothing_changed(cancer: Any) -> None:
    from sklearn.tree import DecisionTreeClassifier

    x, y, _hx, _hy = cancer
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y)
    report = export_model(model, x[:5], options=fast(quantize="int8")).report
    assert report.int8_tensors == 0
    assert any("no operator of this model has an int8 kernel" in n for n in report.notes)
    assert report.evaluated_on == "input-example" and report.change == 0


class Flipped:
    """A module whose exported graph answers the opposite class to its eager forward."""

    @staticmethod
    def make(torch: Any) -> Any:
        class Module(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.linear = torch.nn.Linear(30, 2)

            def forward(self, x: Any) -> Any:
                out = self.linear(x)
                return -out if torch.onnx.is_in_onnx_export() else out

        return Module()


def test_the_gate_refuses_an_export_that_changes_accuracy(mlp: Any) -> None:
    import torch

    _, xs, hxs, hy = mlp
    torch.manual_seed(1)
    with pytest.raises(ExportRefused, match=r"accuracy changed by .* nothing was registered") as e:
        export_model(Flipped.make(torch), xs[:4], held_out=HeldOut(hxs, hy), options=fast())
    report = e.value.extra["report"]
    assert report["passed"] is False and abs(report["change"]) > 1.0
    assert [v["name"] for v in report["variants"]] == ["original", "onnx"]


def test_without_held_out_rows_the_gate_compares_with_the_original(mlp: Any) -> None:
    import torch

    _, xs, _, _ = mlp
    # the original's own predictions on the example rows are the labels: it scores 100
    with pytest.raises(ExportRefused, match=r"accuracy changed by -100\.000 points") as e:
        export_model(Flipped.make(torch), xs[:50], options=fast())
    assert e.value.extra["report"]["evaluated_on"] == "input-example"


def test_the_gate_refuses_a_regression_export_beyond_the_tolerance(diabetes: Any) -> None:
    torch = pytest.importorskip("torch")
    x, _y, hx, hy = diabetes

    class Shifted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(10, 1)

        def forward(self, rows: Any) -> Any:
            out = self.linear(rows)
            return out + 50.0 if torch.onnx.is_in_onnx_export() else out

    # the untrained layer predicts near 0, so the shifted export scores *better*: refused too
    with pytest.raises(ExportRefused, match=r"rmse changed by -[0-9.]+ % of the label's std") as e:
        export_model(Shifted(), x[:4].astype(np.float32), held_out=HeldOut(hx, hy), options=fast())
    report = e.value.extra["report"]
    assert (
        report["metric"] == "rmse"
        and report["variants"][1]["metric"] < report["variants"][0]["metric"]
    )


def test_a_module_that_fails_on_the_example_is_refused(mlp: Any) -> None:
    import torch

    _, xs, _, _ = mlp
    module = torch.nn.Linear(7, 2)
    with pytest.raises(InvalidInput, match=r"the Linear failed on the input example \(shape"):
        export_model(module, xs[:4], options=fast())


def test_tolerance_zero_passes_an_exact_export_and_negative_is_bad_input(cancer: Any) -> None:
    from sklearn.tree import DecisionTreeClassifier

    x, y, hx, hy = cancer
    model = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, y)
    report = export_model(model, x[:5], held_out=HeldOut(hx, hy), options=fast(tolerance=0))
    assert report.report.passed and report.report.change == 0
    for bad in (-1.0, float("nan")):
        with pytest.raises(InvalidInput, match="tolerance must be a number of points >= 0"):
            export_model(model, x[:5], options=fast(tolerance=bad))


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("hist", "skl2onnx failed"),
        ("isotonic", "skl2onnx has no ONNX converter for IsotonicRegression"),
        ("kernel-ridge", "skl2onnx has no ONNX converter for KernelRidge"),
    ],
)
def test_unsupported_estimators_get_a_clear_error(diabetes: Any, name: str, match: str) -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.isotonic import IsotonicRegression
    from sklearn.kernel_ridge import KernelRidge

    x, y, _, _ = diabetes
    model: Any = {
        "hist": HistGradientBoostingRegressor(max_iter=5),
        "isotonic": IsotonicRegression(),
        "kernel-ridge": KernelRidge(),
    }[name]
    rows = x[:, :1] if name == "isotonic" else x
    model.fit(rows, y)
    with pytest.raises(UnsupportedModel, match=match):
        export_model(model, rows[:5], options=fast())


def test_other_bad_models_and_inputs_get_clear_errors(cancer: Any) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y, hx, hy = cancer
    with pytest.raises(UnsupportedModel, match="takes a scikit-learn estimator or pipeline"):
        export_model(object(), x[:5])
    with pytest.raises(UnsupportedModel, match="needs a classifier or a regressor"):
        export_model(StandardScaler().fit(x), x[:5])
    with pytest.raises(InvalidInput, match="is not fitted"):
        export_model(LogisticRegression(), x[:5])
    model = LogisticRegression(max_iter=5000).fit(x[:, :5], y)
    with pytest.raises(InvalidInput, match="must be a 2-D array of rows x features"):
        export_model(model, x[0, :5])
    with pytest.raises(InvalidInput, match="held-out table has 30 feature columns; the model"):
        export_model(model, x[:5, :5], held_out=HeldOut(hx, hy))
    with pytest.raises(InvalidInput, match="unknown quantisation 'int4'"):
        export_model(model, x[:5, :5], options=fast(quantize="int4"))


def test_held_out_from_an_arrow_table(cancer: Any) -> None:
    import pyarrow as pa

    _x, _y, hx, hy = cancer
    columns = {f"f{i}": hx[:, i] for i in range(hx.shape[1])}
    table = pa.table({**columns, "target": hy})
    held = held_out_from_arrow(table, "target")
    assert held.feature_names == [f"f{i}" for i in range(30)] and held.label == "target"
    np.testing.assert_array_equal(held.features, hx)
    with pytest.raises(InvalidInput, match="label column 'nope' is not in the table"):
        held_out_from_arrow(table, "nope")
    with pytest.raises(InvalidInput, match="feature column 'name' is string"):
        held_out_from_arrow(table.append_column("name", pa.array(["a"] * len(hy))), "target")


def test_the_result_holds_the_files_a_registry_version_stores(cancer: Any, tmp_path: Path) -> None:
    import onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, hx, hy = cancer
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    result = export_model(model, x[:5], held_out=HeldOut(hx, hy), options=fast())
    assert result.flavor == "onnx"
    written = result.save(tmp_path)
    assert sorted(p.name for p in written) == sorted([MODEL_FILE, REPORT_FILE])
    onnx.checker.check_model(onnx.load(tmp_path / MODEL_FILE))
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["format"] == "onnx" and report["source"].startswith("Pipeline(StandardScaler")
    for variant in report["variants"]:
        assert variant["size_bytes"] > 0
        assert 0 < variant["single_row"]["p50_ms"] <= variant["single_row"]["p95_ms"]
        assert 0 < variant["batch"]["p50_ms"] <= variant["batch"]["p95_ms"]
    assert report["latency_runs"] == 5 and report["batch_rows"] == 32


def test_the_target_model_is_name_onnx_unless_named() -> None:
    from underlay.ml.export.registration import target_name

    assert target_name("churn", None) == "churn-onnx"
    assert target_name("churn", "edge") == "edge"
    with pytest.raises(InvalidInput, match="longer than 63 characters: name the target model"):
        target_name("m" * 60, None)
