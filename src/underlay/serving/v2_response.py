"""The Open Inference Protocol (KServe V2) over REST: encoding responses and metadata.

Pure functions, no I/O, beside :mod:`underlay.serving.v2` (decoding and validation): a
response body is a JSON object, followed by raw tensor bytes for each output the request asked
for in binary form (the *binary tensor data* extension; the ``Inference-Header-Content-Length``
header gives the length of the JSON part). ``BYTES`` tensors in binary form are
length-prefixed (4-byte little-endian length, then the bytes), as ``tritonclient`` reads them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from underlay import __version__
from underlay.errors import InvalidInput
from underlay.ml.flavors.signature import Signature, TensorSpec
from underlay.serving.v2 import BINARY_EXTENSION, HEADER_LENGTH, Array, InferRequest, v2_datatype


def encode_infer_response(
    model_name: str,
    model_version: str | int,
    outputs: Mapping[str, Array],
    request: InferRequest,
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers; outputs asked for in binary form follow the JSON."""
    names = request.outputs if request.outputs is not None else list(outputs)
    entries, chunks = [], []
    for name in names:
        array = outputs.get(name)
        if array is None:
            raise InvalidInput(
                f"model output {name!r} is unknown (the model returns {', '.join(outputs)})"
            )
        entry: dict[str, Any] = {
            "name": name,
            "datatype": v2_datatype(array.dtype),
            "shape": list(array.shape),
        }
        if request.wants_binary(name):
            raw = _to_binary(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json_data(array)
        entries.append(entry)
    head: dict[str, Any] = {
        "model_name": model_name,
        "model_version": str(model_version),
        "outputs": entries,
    }
    if request.id is not None:
        head["id"] = request.id
    body = json.dumps(head, separators=(",", ":")).encode()
    if not chunks:
        return body, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(body))}
    return b"".join([body, *chunks]), headers


def _to_binary(array: Array) -> bytes:
    if array.dtype.kind in "USO":
        parts = []
        for item in array.ravel().tolist():
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(raw)))
            parts.append(raw)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _to_json_data(array: Array) -> list[Any]:
    if array.dtype.kind in "USO":
        return [i.decode() if isinstance(i, bytes) else str(i) for i in array.ravel().tolist()]
    flat: list[Any] = array.ravel().tolist()
    return flat


def error_body(message: str) -> dict[str, str]:
    """A V2 error response body (``{"error": ...}``, what V2 clients read)."""
    return {"error": message}


def server_metadata() -> dict[str, Any]:
    """``GET /v2``: the server's name, version and protocol extensions."""
    return {"name": "underlay", "version": __version__, "extensions": [BINARY_EXTENSION]}


def model_metadata(
    name: str, version: str | int, signature: Signature, platform: str = "underlay"
) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the model's versions and tensors."""
    return {
        "name": name,
        "versions": [str(version)],
        "platform": platform,
        "inputs": [_tensor_metadata(t) for t in signature.inputs],
        "outputs": [_tensor_metadata(t) for t in signature.outputs],
    }


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": v2_datatype(spec.dtype), "shape": list(spec.shape)}
