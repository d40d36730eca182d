"""Model signatures inferred from an input example: names, dtypes, shapes and value ranges.

A signature lists the model's inputs and outputs as tensors. Each tensor records its name,
its dtype (a numpy dtype name, ``str`` for text), its shape with ``-1`` for the batch
dimension, and what the example held: the least and greatest value (numeric), per column for
2-D tables of at most :data:`MAX_COLUMN_RANGES` columns, whether NaN was seen, and for text
the distinct values (at most :data:`MAX_VALUES`, else only their count). Serving validates a
request's names, dtype kinds and shapes with :meth:`Signature.validate`; the ranges are a
record of what training-time data looked like, for drift checks, not a gate.

An example may be a numpy array (one input named ``input``), a list of rows, a mapping of
names to arrays (named inputs, tabular columns), or anything with ``to_pydict`` / ``columns``
(pyarrow and pandas tables: one input per column).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from underlay.errors import InvalidInput

MAX_VALUES = 50
MAX_COLUMN_RANGES = 1024


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model."""

    name: str
    dtype: str
    shape: list[int]
    min: float | None = None
    max: float | None = None
    column_min: list[float | None] | None = None
    column_max: list[float | None] | None = None
    has_nan: bool = False
    values: list[str] | None = None
    distinct: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v is not False}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TensorSpec:
        try:
            return cls(
                name=str(raw["name"]),
                dtype=str(raw["dtype"]),
                shape=[int(d) for d in raw["shape"]],
                min=_opt_float(raw.get("min")),
                max=_opt_float(raw.get("max")),
                column_min=_opt_floats(raw.get("column_min")),
                column_max=_opt_floats(raw.get("column_max")),
                has_nan=bool(raw.get("has_nan", False)),
                values=None if raw.get("values") is None else [str(v) for v in raw["values"]],
                distinct=None if raw.get("distinct") is None else int(raw["distinct"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"unreadable tensor spec in a model signature: {exc}") from None


@dataclass(frozen=True)
class Signature:
    """What a model takes and returns (see the module docstring)."""

    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Signature | None:
        if not raw:
            return None
        return cls(
            inputs=[TensorSpec.from_dict(t) for t in raw.get("inputs", [])],
            outputs=[TensorSpec.from_dict(t) for t in raw.get("outputs", [])],
        )

    def validate(self, batch: Any) -> None:
        """Raise :class:`InvalidInput` naming the first input whose name, dtype kind or shape
        does not fit the signature."""
        got = {name: array for name, array in as_tensors(batch).items()}
        wanted = [t.name for t in self.inputs]
        if len(self.inputs) == 1 and len(got) == 1:
            got = {self.inputs[0].name: next(iter(got.values()))}
        missing = [n for n in wanted if n not in got]
        if missing:
            raise InvalidInput(
                f"model input {missing[0]!r} is missing (the model takes {', '.join(wanted)})"
            )
        for spec in self.inputs:
            array = got[spec.name]
            if _kind(array.dtype) != _kind_of_name(spec.dtype):
                raise InvalidInput(
                    f"model input {spec.name!r} must be {spec.dtype}, got {_dtype_name(array)}"
                )
            if len(array.shape) != len(spec.shape) or any(
                want not in (-1, have) for want, have in zip(spec.shape, array.shape, strict=True)
            ):
                raise InvalidInput(
                    f"model input {spec.name!r} must have shape {_shape_text(spec.shape)}, "
                    f"got {_shape_text(list(array.shape))}"
                )


def infer_signature(example: Any, output: Any = None) -> Signature:
    """A signature from an input example and, when given, the model's output for it."""
    inputs = [describe(name, array) for name, array in as_tensors(example).items()]
    outputs = []
    if output is not None:
        named = as_tensors(output, default="output")
        outputs = [describe(name, array) for name, array in named.items()]
    return Signature(inputs, outputs)


def as_tensors(batch: Any, default: str = "input") -> dict[str, np.ndarray[Any, Any]]:
    """A batch as named numpy arrays (see the module docstring for what a batch may be)."""
    if isinstance(batch, np.ndarray):
        return {default: batch}
    if isinstance(batch, Mapping):
        return {str(k): np.asarray(v) for k, v in batch.items()}
    if hasattr(batch, "to_pydict"):  # pyarrow Table / RecordBatch
        return {str(k): np.asarray(v) for k, v in batch.to_pydict().items()}
    if hasattr(batch, "columns") and hasattr(batch, "__getitem__"):  # pandas DataFrame
        return {str(c): np.asarray(batch[c]) for c in batch.columns}
    if hasattr(batch, "detach") and hasattr(batch, "numpy"):  # a torch tensor
        return {default: batch.detach().cpu().numpy()}
    if isinstance(batch, list | tuple):
        try:
            return {default: np.asarray(batch)}
        except ValueError as exc:
            raise InvalidInput(f"a model batch of ragged rows cannot be read: {exc}") from None
    raise InvalidInput(
        f"a model batch must be a numpy array, a list of rows, a mapping of names to arrays "
        f"or a table, got {type(batch).__name__}"
    )


def describe(name: str, array: np.ndarray[Any, Any]) -> TensorSpec:
    """The spec of one example tensor, with the values it held."""
    shape = [-1, *(int(d) for d in array.shape[1:])] if array.ndim else []
    dtype = _dtype_name(array)
    if array.dtype.kind in "biuf" and array.size:
        values = array.astype(np.float64)
        finite = values[np.isfinite(values)]
        spec = TensorSpec(
            name,
            dtype,
            shape,
            min=float(finite.min()) if finite.size else None,
            max=float(finite.max()) if finite.size else None,
            has_nan=bool(np.isnan(values).any()),
        )
        if array.ndim == 2 and 0 < array.shape[1] <= MAX_COLUMN_RANGES and finite.size:
            masked = np.ma.masked_invalid(values)
            col_min = masked.min(axis=0).filled(np.nan)
            col_max = masked.max(axis=0).filled(np.nan)
            spec = TensorSpec(
                **{
                    **spec.__dict__,
                    "column_min": [_json_float(v) for v in col_min],
                    "column_max": [_json_float(v) for v in col_max],
                }
            )
        return spec
    if array.dtype.kind in "USO" and array.size:
        distinct = sorted({str(v) for v in array.ravel().tolist()})
        if len(distinct) <= MAX_VALUES:
            return TensorSpec(name, dtype, shape, values=distinct, distinct=len(distinct))
        return TensorSpec(name, dtype, shape, distinct=len(distinct))
    return TensorSpec(name, dtype, shape)


def _dtype_name(array: np.ndarray[Any, Any]) -> str:
    return "str" if array.dtype.kind in "USO" else array.dtype.name


def _kind(dtype: np.dtype[Any]) -> str:
    if dtype.kind in "USO":
        return "text"
    if dtype.kind == "b":
        return "bool"
    return "number" if dtype.kind in "iuf" else dtype.kind


def _kind_of_name(name: str) -> str:
    return "text" if name == "str" else _kind(np.dtype(name))


def _shape_text(shape: list[int]) -> str:
    return "(" + ", ".join("N" if d == -1 else str(d) for d in shape) + ")"


def _json_float(value: Any) -> float | None:
    number = float(value)
    return number if np.isfinite(number) else None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_floats(value: Any) -> list[float | None] | None:
    return None if value is None else [None if v is None else float(v) for v in value]
