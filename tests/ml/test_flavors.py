"""Model flavors without a server: save, load, predict, signatures, the refusal to run code
from unverified files, and plugins by entry point."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from underlay.errors import InvalidInput
from underlay.ml import flavors
from underlay.ml.flavors import UnsignedArtifactRefused
from underlay.ml.flavors.signature import Signature, infer_signature

X = np.random.RandomState(1).rand(30, 4)
Y = (X[:, 0] > 0.5).astype(int)


def _sk() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression().fit(X, Y)


def test_sklearn_saves_as_skops_with_a_signature_and_loads_unverified(tmp_path: Path) -> None:
    model = _sk()
    info = flavors.save_model(model, tmp_path, input_example=X[:6])
    assert info.flavor == "sklearn" and info.options["format"] == "skops"
    assert info.files == ["model.skops"] and not (tmp_path / "model.pkl").exists()
    meta = json.loads((tmp_path / flavors.METADATA_FILE).read_text())
    assert meta["flavor"] == "sklearn" and meta["signature"]["inputs"][0]["shape"] == [-1, 4]
    spec = info.signature.inputs[0] if info.signature else None
    assert spec is not None and spec.dtype == "float64"
    assert spec.min == pytest.approx(X[:6].min()) and spec.max == pytest.approx(X[:6].max())
    assert spec.column_min == pytest.approx(list(X[:6].min(axis=0)))
    loaded = flavors.load_model(tmp_path)  # skops of default-trusted types: no code runs
    assert loaded.predict(X).tolist() == model.predict(X).tolist()
    assert loaded.signature == info.signature


def test_skops_types_outside_its_defaults_load_only_when_verified(tmp_path: Path) -> None:
    from tests.ml.sk_custom import ThresholdClassifier

    info = flavors.save_model(ThresholdClassifier(0.3).fit(X, Y), tmp_path)
    assert info.options["trusted_types"] == ["tests.ml.sk_custom.ThresholdClassifier"]
    with pytest.raises(InvalidInput, match=r"tests\.ml\.sk_custom\.ThresholdClassifier"):
        flavors.load_model(tmp_path)
    loaded = flavors.load_model(tmp_path, verified=True)
    assert loaded.predict(X[:3]).tolist() == (X[:3, 0] > 0.3).astype(int).tolist()


def test_a_pickle_is_loaded_only_from_a_verified_artifact(tmp_path: Path) -> None:
    import pickle

    (tmp_path / "model.pkl").write_bytes(pickle.dumps(_sk()))
    meta = {"underlay_model": 1, "flavor": "sklearn", "options": {"format": "pickle"}}
    (tmp_path / flavors.METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(UnsignedArtifactRefused, match=r"pickled scikit-learn model model\.pkl"):
        flavors.load_model(tmp_path)
    assert flavors.load_model(tmp_path, verified=True).predict(X[:2]).shape == (2,)


def test_pytorch_weights_are_safetensors_and_the_class_is_rebuilt_by_path(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from tests.ml.torch_modules import TinyNet

    net = TinyNet(4, 8)
    example = X[:3].astype(np.float32)
    info = flavors.save_model(net, tmp_path, input_example=example, init_kwargs={"hidden": 8})
    assert info.flavor == "pytorch" and info.files == ["weights.safetensors"]
    assert info.options["module_class"] == "tests.ml.torch_modules:TinyNet"
    with pytest.raises(UnsignedArtifactRefused, match="an import runs its code"):
        flavors.load_model(tmp_path)
    loaded = flavors.load_model(tmp_path, verified=True)
    with torch.no_grad():
        expected = net(torch.from_numpy(example)).numpy()
    assert np.allclose(loaded.predict(example), expected)
    assert loaded.signature is not None and loaded.signature.outputs[0].shape == [-1, 2]

    class Local(torch.nn.Module):  # type: ignore[misc]
        def forward(self, x: Any) -> Any:
            return x

    with pytest.raises(InvalidInput, match="defined in a function"):
        flavors.save_model(Local(), tmp_path / "local")


def test_torchscript_loads_only_verified(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from tests.ml.torch_modules import TinyNet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated upstream, still used
        scripted = torch.jit.script(TinyNet())
    info = flavors.save_model(scripted, tmp_path)
    assert info.options["format"] == "torchscript"
    with pytest.raises(UnsignedArtifactRefused, match="TorchScript"):
        flavors.load_model(tmp_path)
    example = X[:2].astype(np.float32)
    assert flavors.load_model(tmp_path, verified=True).predict(example).shape == (2, 2)


def test_onnx_from_the_sklearn_flavor_runs_on_onnxruntime(tmp_path: Path) -> None:
    import onnx

    model = _sk()
    data = flavors.load_model(_saved(model, tmp_path / "sk")).to_onnx(X)
    proto = onnx.load_from_string(data)
    info = flavors.save_model(proto, tmp_path / "onnx", input_example=X[:4].astype(np.float32))
    assert info.flavor == "onnx" and info.files == ["model.onnx"]
    loaded = flavors.load_model(tmp_path / "onnx")
    out = loaded.predict(X)
    labels = out["label"] if isinstance(out, dict) else out
    assert labels.tolist() == model.predict(X).tolist()


def _saved(model: Any, folder: Path) -> Path:
    flavors.save_model(model, folder)
    return folder


def test_unknown_models_and_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"no model flavor handles a builtins\.dict"):
        flavors.save_model({"not": "a model"}, tmp_path)
    with pytest.raises(InvalidInput, match="no model flavor 'keras'"):
        flavors.save_model(_sk(), tmp_path, flavor="keras")
    with pytest.raises(InvalidInput, match="not a saved model"):
        flavors.load_model(tmp_path / "empty")


def test_a_flavor_plugin_is_found_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "echo_flavor.py"
    package.write_text(
        "from underlay.ml.flavors.base import FlavorBase\n"
        "class Echo(FlavorBase):\n"
        "    name = 'echo'\n"
        "    def handles(self, model): return model == 'echo'\n"
        "    def save(self, ctx):\n"
        "        (ctx.folder / 'echo.txt').write_text('echo')\n"
        "        return {}\n"
        "    def load(self, ctx): return 'echo'\n"
        "    def predict(self, model, batch): return batch\n"
    )
    dist = tmp_path / "echo_flavor-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-flavor\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[underlay.flavors]\necho = echo_flavor:Echo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "echo" in [f.name for f in flavors.flavors()]
    info = flavors.save_model("echo", tmp_path / "m", input_example=[[1, 2]])
    assert info.flavor == "echo" and info.files == ["echo.txt"]
    assert flavors.load_model(tmp_path / "m").predict([3]) == [3]
    sys.modules.pop("echo_flavor", None)


def test_signatures_validate_names_kinds_and_shapes() -> None:
    import pyarrow as pa

    table = pa.table({"age": [31, 45, 27], "plan": ["basic", "pro", "basic"]})
    signature = infer_signature(table)
    age, plan = signature.inputs
    assert (age.name, age.dtype, age.shape, age.min, age.max) == ("age", "int64", [-1], 27, 45)
    assert (plan.dtype, plan.values, plan.distinct) == ("str", ["basic", "pro"], 2)
    assert Signature.from_dict(signature.to_dict()) == signature
    signature.validate({"age": np.array([1, 2]), "plan": np.array(["x", "y"])})
    with pytest.raises(InvalidInput, match="model input 'plan' is missing"):
        signature.validate({"age": np.array([1])})
    with pytest.raises(InvalidInput, match="model input 'age' must be int64, got str"):
        signature.validate({"age": np.array(["1"]), "plan": np.array(["x"])})
    matrix = infer_signature(X[:5].copy())
    with pytest.raises(InvalidInput, match=r"shape \(N, 4\), got \(2, 3\)"):
        matrix.validate(X[:2, :3])
    nan = X[:3].copy()
    nan[0, 0] = np.nan
    assert infer_signature(nan).inputs[0].has_nan is True
