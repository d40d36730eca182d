"""Conversion of a scikit-learn estimator or a PyTorch module to ONNX.

scikit-learn goes through skl2onnx, PyTorch through ``torch.onnx.export`` with the dynamo
exporter (onnxscript). Both take the input example for the input's width and dtype and leave
the batch axis dynamic, so one exported model answers a single row and a batch.

Third-party deprecation warnings raised while converting (torch.export's pytree, skl2onnx
reading deprecated estimator attributes) are not the caller's to act on, so they are
ignored inside the conversion only; anything else propagates.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from underlay.errors import InvalidInput

Kind = Literal["sklearn", "torch"]
Task = Literal["classification", "regression"]

#: The ONNX opsets written by skl2onnx (the default domain and ai.onnx.ml).
SKLEARN_OPSET = {"": 17, "ai.onnx.ml": 3}
#: The opset the dynamo exporter writes for PyTorch.
TORCH_OPSET = 18

#: Estimators checked by the test suite to convert and predict as the original does.
SKLEARN_SUPPORTED = (
    "Pipeline",
    "StandardScaler, MinMaxScaler, RobustScaler, MaxAbsScaler, Normalizer, SimpleImputer, "
    "PCA, PolynomialFeatures",
    "LinearRegression, Ridge, Lasso, ElasticNet, LogisticRegression, SGDClassifier",
    "DecisionTree, RandomForest, ExtraTrees (classifier and regressor)",
    "GradientBoostingClassifier, GradientBoostingRegressor",
)
#: Estimators known not to convert with skl2onnx 1.20 and scikit-learn 1.9.
SKLEARN_UNSUPPORTED = (
    "HistGradientBoostingClassifier",
    "HistGradientBoostingRegressor",
    "IsotonicRegression",
    "KernelRidge",
    "SplineTransformer",
)


class UnsupportedModel(InvalidInput):
    """The model (or one of its steps) has no ONNX conversion."""


@dataclass(frozen=True)
class Converted:
    """An ONNX model and what the evaluation needs to know about it."""

    onnx: bytes
    kind: Kind
    task: Task
    input_name: str
    opset: int
    description: str


def detect_kind(model: object) -> Kind:
    """``sklearn`` or ``torch``, or an error naming what is supported."""
    if type(model).__module__.split(".")[0] == "torch" or _is_torch_module(model):
        return "torch"
    if hasattr(model, "fit") and hasattr(model, "get_params"):
        return "sklearn"
    raise UnsupportedModel(
        f"cannot export a {type(model).__name__} to ONNX: export takes a scikit-learn "
        "estimator or pipeline, or a torch.nn.Module"
    )


def _is_torch_module(model: object) -> bool:
    return any(
        cls.__module__ == "torch.nn.modules.module" and cls.__name__ == "Module"
        for cls in type(model).__mro__
    )


def as_features(example: Any) -> np.ndarray:
    """The input example as a 2-D float32 array (rows x features)."""
    if _is_torch_tensor(example):
        example = example.detach().cpu().numpy()
    try:
        rows = np.asarray(example, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"the input example must be numeric rows (a 2-D array of numbers): {exc}"
        ) from None
    if rows.ndim != 2 or rows.shape[0] < 1 or rows.shape[1] < 1:
        raise InvalidInput(
            f"the input example must be a 2-D array of rows x features, not shape {rows.shape}"
        )
    return rows


def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _not_torchvision(record: logging.LogRecord) -> bool:
    return "torchvision" not in record.getMessage()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # torch's exporter logs that torchvision (which no tabular model needs) is missing
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    registration.addFilter(_not_torchvision)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        registration.removeFilter(_not_torchvision)


def convert(model: object, example: np.ndarray, task: Task | None = None) -> Converted:
    """``model`` as ONNX, with its input width taken from ``example`` (rows x features)."""
    if detect_kind(model) == "torch":
        return _convert_torch(model, example, task)
    return _convert_sklearn(model, example)


def sklearn_task(model: object) -> Task:
    from sklearn.base import is_classifier, is_regressor

    if is_classifier(model):
        return "classification"
    if is_regressor(model):
        return "regression"
    raise UnsupportedModel(
        f"cannot export a {describe(model)}: export needs a classifier or a regressor "
        "(a pipeline ending in one) to check its accuracy"
    )


def describe(model: object) -> str:
    """``Pipeline(StandardScaler, LogisticRegression)`` or the class name."""
    steps = getattr(model, "steps", None)
    if isinstance(steps, list) and steps:
        return f"{type(model).__name__}({', '.join(type(s[1]).__name__ for s in steps)})"
    return type(model).__name__


def _convert_sklearn(model: object, example: np.ndarray) -> Converted:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    task = sklearn_task(model)
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise InvalidInput(f"the {describe(model)} is not fitted; fit it before export") from None
    onnx = _skl2onnx(model, example, task)
    return Converted(
        onnx=onnx.SerializeToString(),
        kind="sklearn",
        task=task,
        input_name=onnx.graph.input[0].name,
        opset=SKLEARN_OPSET[""],
        description=describe(model),
    )


def _skl2onnx(model: object, example: np.ndarray, task: Task) -> Any:
    from skl2onnx import to_onnx
    from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator

    # classifiers answer probabilities as a tensor, not a list of maps (ZipMap)
    options: dict[str, Any] | None = {"zipmap": False} if task == "classification" else None
    try:
        with _quiet():
            try:
                return to_onnx(model, example[:1], options=options, target_opset=SKLEARN_OPSET)
            except NameError as exc:  # a classifier without the zipmap option (LinearSVC)
                if "zipmap" not in str(exc):
                    raise
                return to_onnx(model, example[:1], target_opset=SKLEARN_OPSET)
    except (MissingConverter, MissingShapeCalculator) as exc:
        found = re.search(r"<class '([\w.]+)'>", str(exc))
        name = found.group(1).rsplit(".", 1)[-1] if found else describe(model)
        raise UnsupportedModel(
            f"cannot export the {describe(model)}: skl2onnx has no ONNX converter for {name} "
            "(see docs/export.md for the estimators that convert)"
        ) from None
    except (ValueError, RuntimeError, TypeError, NameError, AttributeError) as exc:
        raise UnsupportedModel(
            f"cannot export the {describe(model)}: skl2onnx failed: {_first_line(str(exc))} "
            "(see docs/export.md for the estimators that convert)"
        ) from None


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]


def _convert_torch(module: Any, example: np.ndarray, task: Task | None) -> Converted:
    import torch

    module.eval()
    sample = torch.from_numpy(_at_least_two_rows(example))
    with torch.no_grad():
        try:
            out = module(sample)
        except Exception as exc:  # user code: its error, said in one line
            raise InvalidInput(
                f"the {type(module).__name__} failed on the input example "
                f"(shape {tuple(sample.shape)}): {type(exc).__name__}: {_first_line(str(exc))}"
            ) from None
    if not isinstance(out, torch.Tensor):
        raise UnsupportedModel(
            f"cannot export the {type(module).__name__}: forward must return one tensor, "
            f"not {type(out).__name__}"
        )
    width = 1 if out.dim() == 1 else int(out.shape[-1])
    found: Task = task or ("classification" if width > 1 else "regression")
    batch = torch.export.Dim.DYNAMIC
    try:
        with _quiet():
            program = torch.onnx.export(
                module,
                (sample,),
                dynamo=True,
                dynamic_shapes=({0: batch},),
                opset_version=TORCH_OPSET,
                verbose=False,
            )
    except Exception as exc:  # torch's exporter raises many types; all mean "did not convert"
        raise UnsupportedModel(
            f"cannot export the {type(module).__name__}: torch.onnx.export failed: "
            f"{type(exc).__name__}: {_torch_reason(exc)}"
        ) from None
    assert program is not None
    proto = program.model_proto
    return Converted(
        onnx=proto.SerializeToString(),
        kind="torch",
        task=found,
        input_name=proto.graph.input[0].name,
        opset=TORCH_OPSET,
        description=type(module).__name__,
    )


def _at_least_two_rows(example: np.ndarray) -> np.ndarray:
    # torch.export specialises a batch of one to the constant 1; two rows keep it dynamic
    return example if example.shape[0] >= 2 else np.repeat(example, 2, axis=0)


def _torch_reason(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    summary = next((i for i, line in enumerate(lines) if "Exception summary" in line), None)
    if summary is not None and summary + 1 < len(lines):
        return lines[summary + 1].strip()[:200]
    return _first_line(str(exc))
