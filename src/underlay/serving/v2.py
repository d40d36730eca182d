"""The Open Inference Protocol (KServe V2) over REST: decoding and validation.

Pure functions, no I/O: the routes in ``api/routes/inference_v2.py`` and the JSON predict
route call them (responses and metadata are encoded by :mod:`underlay.serving.v2_response`).
A request body is a JSON object, optionally followed by raw tensor bytes
(the *binary tensor data* extension: the ``Inference-Header-Content-Length`` header gives the
length of the JSON part; each input with ``parameters.binary_data_size`` takes that many
bytes, in order, from the rest). ``BYTES`` tensors in binary form are length-prefixed
(4-byte little-endian length, then the bytes), as ``tritonclient`` writes them.

Validation against the model's :class:`~underlay.ml.flavors.signature.Signature`, compiled
once per signature (:func:`compile_signature`) so the hot path does no lookups twice:

- every input the model takes is present, no other and none twice;
- the datatype casts *safely* to the signature's dtype (``FP32`` into a ``float64`` model is
  accepted and widened; ``FP64`` into ``float32``, ``INT64`` into ``float32`` or ``BYTES``
  into a number are refused), text only into text, ``BOOL`` only into ``bool``;
- the shape has the signature's rank and its fixed dimensions, and all inputs share the
  batch dimension (axis 0, at least one row);
- floats hold no NaN or infinity where the training example held no NaN;
- with ``ranges="reject"``, numbers lie within the training range widened by
  ``range_slack`` times its width on each side (per column for 2-D inputs); the default,
  ``"ignore"``, keeps ranges a drift record as the signature module describes.

Every refusal is an :class:`~underlay.errors.InvalidInput` (400) naming the input; a body
over :data:`MAX_BODY_BYTES` is a :class:`~underlay.errors.PayloadTooLarge` (413), refused from
its ``Content-Length`` before it is read (:func:`check_body_size`).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from underlay.errors import InvalidInput, PayloadTooLarge
from underlay.ml.flavors.signature import Signature, TensorSpec
from underlay.serving.jsonbody import parse_json

MAX_BODY_BYTES = 32 * 1024 * 1024
"""The largest request body accepted (32 MiB: a 100-row request of 20 float64 features is
16 KiB)."""

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_EXTENSION = "binary_tensor_data"

RangePolicy = Literal["ignore", "reject"]
Array = np.ndarray[Any, Any]

_V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_NUMPY_TO_V2 = {dt.str: name for name, dt in _V2_TO_NUMPY.items() if name != "BYTES"}


def v2_datatype(dtype: np.dtype[Any] | str) -> str:
    """The V2 datatype name of a numpy dtype or a signature dtype name (``str`` is BYTES)."""
    if dtype == "str":
        return "BYTES"
    dt = np.dtype(dtype)
    if dt.kind in "USO":
        return "BYTES"
    try:
        return _NUMPY_TO_V2[dt.newbyteorder("<").str if dt.byteorder == ">" else dt.str]
    except KeyError:
        raise InvalidInput(f"dtype {dt.name} has no Open Inference Protocol datatype") from None


@dataclass(frozen=True)
class InputRule:
    """One model input, compiled for fast checks."""

    name: str
    dtype: np.dtype[Any]
    datatype: str
    shape: tuple[int, ...]
    text: bool
    finite: bool
    low: Array | None = None
    high: Array | None = None


@dataclass(frozen=True)
class CompiledSignature:
    """A signature prepared for validation (see :func:`compile_signature`)."""

    inputs: dict[str, InputRule]
    outputs: tuple[str, ...]
    signature: Signature

    @property
    def open(self) -> bool:
        """A model without a signature: any names and types, rows still checked."""
        return not self.inputs


def compile_signature(
    signature: Signature | None, *, ranges: RangePolicy = "ignore", range_slack: float = 0.1
) -> CompiledSignature:
    """Prepare ``signature`` for :func:`validate_inputs`; call once per deployed version.

    A model saved without a signature (None) takes any input names and datatypes."""
    signature = signature or Signature()
    rules = {}
    for spec in signature.inputs:
        text = spec.dtype == "str"
        dtype = np.dtype(np.object_) if text else np.dtype(spec.dtype)
        low, high = _bounds(spec, range_slack) if ranges == "reject" and not text else (None, None)
        rules[spec.name] = InputRule(
            name=spec.name,
            dtype=dtype,
            datatype=v2_datatype(spec.dtype),
            shape=tuple(spec.shape),
            text=text,
            finite=dtype.kind == "f" and not spec.has_nan,
            low=low,
            high=high,
        )
    return CompiledSignature(rules, tuple(t.name for t in signature.outputs), signature)


def _bounds(spec: TensorSpec, slack: float) -> tuple[Array | None, Array | None]:
    if spec.column_min is not None and spec.column_max is not None:
        lo = np.array([np.nan if v is None else v for v in spec.column_min], dtype=np.float64)
        hi = np.array([np.nan if v is None else v for v in spec.column_max], dtype=np.float64)
    elif spec.min is not None and spec.max is not None:
        lo, hi = np.array(spec.min, dtype=np.float64), np.array(spec.max, dtype=np.float64)
    else:
        return None, None
    margin = (hi - lo) * slack
    # A column the example never saw a finite value in is not checked.
    return np.where(np.isnan(lo), -np.inf, lo - margin), np.where(np.isnan(hi), np.inf, hi + margin)


@dataclass
class InferRequest:
    """A decoded, validated V2 infer request."""

    id: str | None
    inputs: dict[str, Array]
    outputs: list[str] | None = None
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False
    rows: int = 0

    def wants_binary(self, name: str) -> bool:
        return self.binary_outputs.get(name, self.binary_default)


def check_body_size(content_length: str | int | None, limit: int = MAX_BODY_BYTES) -> None:
    """Refuse a body from its declared length, before reading it."""
    if content_length is None:
        return
    try:
        size = int(content_length)
    except ValueError:
        raise InvalidInput(f"Content-Length {content_length!r} is not a number") from None
    if size > limit:
        raise PayloadTooLarge(
            f"the request body of {size} bytes is over the limit of {limit} bytes; "
            "send fewer rows per request"
        )


def decompress_body(body: bytes, encoding: str | None, limit: int = MAX_BODY_BYTES) -> bytes:
    """A body sent with ``Content-Encoding: gzip`` or ``deflate`` (tritonclient's
    ``request_compression_algorithm``), inflated to at most ``limit`` bytes."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidInput(f"Content-Encoding {encoding[:40]!r} is not supported; use gzip")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the {encoding} body cannot be inflated: {exc}") from None
    if len(plain) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"the inflated request body is over the limit of {limit} bytes")
    if not inflater.eof:
        raise InvalidInput(f"the {encoding} body is cut short")
    return plain


def decode_infer_request(
    body: bytes,
    header_length: str | int | None,
    signature: CompiledSignature,
    *,
    limit: int = MAX_BODY_BYTES,
) -> InferRequest:
    """Decode and validate a V2 infer request body (JSON, or JSON then binary tensors)."""
    if len(body) > limit:
        check_body_size(len(body), limit)
    json_part, binary = _split_body(body, header_length)
    head = _load_json(json_part)
    raw_inputs = head.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("an infer request needs a non-empty list 'inputs'")
    arrays: dict[str, Array] = {}
    offset = 0
    for i, raw in enumerate(raw_inputs):
        name, array, offset = _decode_input(raw, i, binary, offset, signature)
        if name in arrays:
            raise InvalidInput(f"model input {name!r} is given twice")
        arrays[name] = array
    if offset != len(binary):
        raise InvalidInput(
            f"the binary part holds {len(binary)} bytes but the inputs declare {offset}"
        )
    request = InferRequest(id=_request_id(head.get("id")), inputs=arrays)
    _read_outputs(head, request, signature)
    request.rows = validate_inputs(arrays, signature)
    return request


def _split_body(body: bytes, header_length: str | int | None) -> tuple[bytes, bytes]:
    if header_length is None or header_length == "":
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidInput(f"{HEADER_LENGTH} {header_length!r} is not a number") from None
    if not 0 < length <= len(body):
        raise InvalidInput(f"{HEADER_LENGTH} {length} does not fit a body of {len(body)} bytes")
    return body[:length], body[length:]


def _load_json(raw: bytes) -> dict[str, Any]:
    try:
        head = parse_json(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"the request is not valid JSON: {exc}") from None
    if not isinstance(head, dict):
        raise InvalidInput("an infer request must be a JSON object")
    return head


def _request_id(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > 256:
        raise InvalidInput("'id' must be a string of at most 256 characters")
    return raw


def _decode_input(
    raw: Any, index: int, binary: bytes, offset: int, signature: CompiledSignature
) -> tuple[str, Array, int]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InvalidInput(f"inputs[{index}] must be an object with a string 'name'")
    name: str = raw["name"]
    rule = signature.inputs.get(name)
    if rule is None and not signature.open:
        raise InvalidInput(
            f"model input {name!r} is unknown (the model takes {', '.join(signature.inputs)})"
        )
    datatype = raw.get("datatype")
    dtype = _V2_TO_NUMPY.get(datatype) if isinstance(datatype, str) else None
    if dtype is None or not isinstance(datatype, str):
        raise InvalidInput(
            f"model input {name!r} has datatype {datatype!r}; use one of {', '.join(_V2_TO_NUMPY)}"
        )
    shape = _shape(raw.get("shape"), name)
    count = math.prod(shape)
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"model input {name!r}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"model input {name!r}: binary_data_size must be a count of bytes")
        if offset + size > len(binary):
            raise InvalidInput(
                f"model input {name!r} declares {size} binary bytes past the end of the body"
            )
        chunk = binary[offset : offset + size]
        array = _from_binary(chunk, datatype, dtype, count, name)
        offset += size
    else:
        array = _from_json(raw.get("data"), datatype, dtype, count, name)
    return name, array.reshape(shape), offset


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise InvalidInput(f"model input {name!r}: 'shape' must be a list of non-negative ints")
    return tuple(raw)


def _from_binary(chunk: bytes, datatype: str, dtype: np.dtype[Any], count: int, name: str) -> Array:
    if datatype == "BYTES":
        items = _unpack_bytes(chunk, name)
        if len(items) != count:
            raise InvalidInput(
                f"model input {name!r} holds {len(items)} strings but its shape wants {count}"
            )
        return np.array(items, dtype=np.object_)
    if len(chunk) != count * dtype.itemsize:
        raise InvalidInput(
            f"model input {name!r} holds {len(chunk)} bytes but its shape and datatype "
            f"want {count * dtype.itemsize}"
        )
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<"))


def _unpack_bytes(chunk: bytes, name: str) -> list[str]:
    items, pos, end = [], 0, len(chunk)
    while pos < end:
        if pos + 4 > end:
            raise InvalidInput(f"model input {name!r}: a BYTES element is cut short")
        (length,) = struct.unpack_from("<I", chunk, pos)
        pos += 4
        if pos + length > end:
            raise InvalidInput(f"model input {name!r}: a BYTES element runs past its data")
        try:
            items.append(chunk[pos : pos + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"model input {name!r}: a BYTES element is not UTF-8") from None
        pos += length
    return items


def _from_json(data: Any, datatype: str, dtype: np.dtype[Any], count: int, name: str) -> Array:
    if not isinstance(data, list):
        raise InvalidInput(f"model input {name!r} needs 'data' (a list) or binary data")
    try:
        array = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"model input {name!r}: 'data' is ragged") from None
    if array.size != count:
        raise InvalidInput(
            f"model input {name!r} holds {array.size} values but its shape wants {count}"
        )
    kind = array.dtype.kind
    if count and not _json_kind_fits(kind, datatype):
        raise InvalidInput(
            f"model input {name!r} is declared {datatype} but 'data' holds "
            f"{'text' if kind in 'USO' else array.dtype.name} values"
        )
    if datatype == "BYTES":
        return array.ravel().astype(np.object_)
    try:
        return array.ravel().astype(dtype)
    except (OverflowError, ValueError):
        raise InvalidInput(f"model input {name!r}: a value does not fit {datatype}") from None


def _json_kind_fits(kind: str, datatype: str) -> bool:
    if datatype == "BYTES":
        return kind == "U"
    if datatype == "BOOL":
        return kind == "b"
    if datatype.startswith("FP"):
        return kind in "iuf"
    return kind in "iu"


def _read_outputs(head: Mapping[str, Any], request: InferRequest, sig: CompiledSignature) -> None:
    params = head.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be an object")
    request.binary_default = bool(params.get("binary_data_output", False))
    raw = head.get("outputs")
    if raw is None:
        return
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'")
    names = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("'outputs' must be a list of objects with a 'name'")
        name = item["name"]
        if sig.outputs and name not in sig.outputs:
            raise InvalidInput(
                f"model output {name!r} is unknown (the model returns {', '.join(sig.outputs)})"
            )
        out_params = item.get("parameters") or {}
        if isinstance(out_params, dict) and "binary_data" in out_params:
            request.binary_outputs[name] = bool(out_params["binary_data"])
        names.append(name)
    request.outputs = names


def validate_inputs(arrays: dict[str, Array], signature: CompiledSignature) -> int:
    """Check named arrays against the signature, casting in place where safe; the row count."""
    if signature.open:
        return _open_rows(arrays)
    missing = [n for n in signature.inputs if n not in arrays]
    if missing:
        raise InvalidInput(
            f"model input {missing[0]!r} is missing (the model takes {', '.join(signature.inputs)})"
        )
    rows = -1
    for name, array in arrays.items():
        rule = signature.inputs.get(name)
        if rule is None:
            raise InvalidInput(
                f"model input {name!r} is unknown (the model takes {', '.join(signature.inputs)})"
            )
        array = arrays[name] = _check_dtype(array, rule)
        _check_shape(array, rule)
        if rows == -1:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise InvalidInput(f"model input {name!r} has {array.shape[0]} rows, the others {rows}")
        _check_values(array, rule)
    if rows <= 0:
        raise InvalidInput("an infer request needs at least one row")
    return rows


def _open_rows(arrays: dict[str, Array]) -> int:
    counts = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise InvalidInput("every input needs the same number of rows (at least one) on axis 0")
    return counts.pop()


def _check_dtype(array: Array, rule: InputRule) -> Array:
    kind = array.dtype.kind
    if rule.text:
        if kind not in "USO":
            raise InvalidInput(
                f"model input {rule.name!r} must be BYTES, got {v2_datatype(array.dtype)}"
            )
        return array
    if kind in "USO" or (kind == "b") != (rule.dtype.kind == "b"):
        raise InvalidInput(
            f"model input {rule.name!r} must be {rule.datatype}, got {v2_datatype(array.dtype)}"
        )
    if array.dtype == rule.dtype:
        return array
    if not np.can_cast(array.dtype, rule.dtype, "safe"):
        raise InvalidInput(
            f"model input {rule.name!r} must be {rule.datatype} (or a type that widens to it), "
            f"got {v2_datatype(array.dtype)}"
        )
    return array.astype(rule.dtype)


def _check_shape(array: Array, rule: InputRule) -> None:
    shape = array.shape
    if len(shape) != len(rule.shape) or any(
        want != -1 and want != have for want, have in zip(rule.shape, shape, strict=True)
    ):
        raise InvalidInput(
            f"model input {rule.name!r} must have shape {_shape_text(rule.shape)}, "
            f"got {list(shape)}"
        )


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _check_values(array: Array, rule: InputRule) -> None:
    if rule.finite and not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0][0])
        raise InvalidInput(
            f"model input {rule.name!r} holds NaN or infinity (row {row}); "
            "the model was trained without missing values"
        )
    if rule.low is not None and rule.high is not None:
        bad = (array < rule.low) | (array > rule.high)
        if bad.any():
            at = np.argwhere(bad)[0]
            raise InvalidInput(
                f"model input {rule.name!r} value {array[tuple(at)]!r} at {at.tolist()} "
                "lies outside the range seen in training"
            )


def records_to_inputs(records: Any, signature: CompiledSignature) -> dict[str, Array]:
    """Named arrays from JSON records, validated like a V2 request.

    A record maps input names to that row's value (a scalar for a ``[-1]`` input, a list for
    ``[-1, F]``); for a model with one input a record may also be the bare value, e.g. a list
    of the F features.
    """
    if not isinstance(records, list) or not records:
        raise InvalidInput("'records' must be a non-empty list")
    if signature.open:  # no signature: the records are the rows of one numeric input
        array = _column(
            "input", records, InputRule("input", np.dtype(np.float64), "FP64", (), False, False)
        )
        return {"input": array}
    names = list(signature.inputs)
    columns: dict[str, list[Any]] = {n: [] for n in names}
    single = names[0] if len(names) == 1 else None
    for i, record in enumerate(records):
        if isinstance(record, dict):
            if len(record) != len(names) or any(k not in columns for k in record):
                _record_error(record, names, i)
            for key, value in record.items():
                columns[key].append(value)
        elif single is not None:
            columns[single].append(record)
        else:
            raise InvalidInput(f"records[{i}] must be an object of {', '.join(names)}")
    arrays = {
        name: _column(name, values, signature.inputs[name]) for name, values in columns.items()
    }
    validate_inputs(arrays, signature)
    return arrays


def _record_error(record: Mapping[str, Any], names: list[str], index: int) -> None:
    unknown = [k for k in record if k not in names]
    if unknown:
        raise InvalidInput(
            f"records[{index}] has feature {unknown[0]!r}, which the model does not take "
            f"(it takes {', '.join(names)})"
        )
    missing = [n for n in names if n not in record]
    raise InvalidInput(f"records[{index}] lacks feature {missing[0]!r}")


def _column(name: str, values: list[Any], rule: InputRule) -> Array:
    try:
        array = np.asarray(values)
    except ValueError:
        raise InvalidInput(f"feature {name!r}: the records' values are ragged") from None
    kind = array.dtype.kind
    if rule.text:
        if kind != "U":
            raise InvalidInput(f"feature {name!r} must be text in every record")
        return array.astype(np.object_)
    if kind not in "biuf" or (kind == "b") != (rule.dtype.kind == "b"):
        raise InvalidInput(
            f"feature {name!r} must be {'true/false' if rule.dtype.kind == 'b' else 'a number'} "
            "in every record"
        )
    if kind in "iu" and rule.dtype.kind == "f":
        return array.astype(rule.dtype)
    if kind == "f" and rule.dtype.kind in "iu":
        raise InvalidInput(f"feature {name!r} must be a whole number in every record")
    try:
        return array.astype(rule.dtype, casting="same_kind")
    except (OverflowError, TypeError, ValueError):
        raise InvalidInput(f"feature {name!r}: a value does not fit {rule.datatype}") from None
