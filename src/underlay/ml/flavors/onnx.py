"""The ONNX flavor: ``model.onnx`` run with onnxruntime on the CPU.

ONNX files hold no code, so an unverified folder loads too (the registry still verifies
every artifact it hands out). ``predict`` feeds a single array to the model's first input and
a mapping by input name; it returns the first output, or a mapping when there are several.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from underlay.errors import InvalidInput
from underlay.ml.flavors.base import FlavorBase, LoadContext, SaveContext
from underlay.ml.flavors.signature import as_tensors

ONNX_FILE = "model.onnx"


class OnnxFlavor(FlavorBase):
    name: ClassVar[str] = "onnx"
    supports: ClassVar[frozenset[str]] = frozenset({"onnx"})

    def handles(self, model: object) -> bool:
        return type(model).__name__ == "ModelProto" and type(model).__module__.startswith("onnx")

    def save(self, ctx: SaveContext) -> dict[str, Any]:
        data = ctx.model if isinstance(ctx.model, bytes) else ctx.model.SerializeToString()
        (ctx.folder / ONNX_FILE).write_bytes(data)
        return {"file": ONNX_FILE}

    def load(self, ctx: LoadContext) -> Any:
        import onnxruntime as ort

        path = ctx.folder / ONNX_FILE
        try:
            return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InvalidInput(f"{ONNX_FILE} is not a model onnxruntime can run: {exc}") from None

    def predict(self, model: Any, batch: Any) -> Any:
        if isinstance(model, bytes) or hasattr(model, "SerializeToString"):
            model = _session(model)
        inputs = model.get_inputs()
        tensors = as_tensors(batch)
        if len(tensors) == 1 and len(inputs) == 1:
            feed = {inputs[0].name: _cast(next(iter(tensors.values())), inputs[0].type)}
        else:
            feed = {i.name: _cast(tensors[i.name], i.type) for i in inputs if i.name in tensors}
        outputs = model.run(None, feed)
        names = [o.name for o in model.get_outputs()]
        return outputs[0] if len(outputs) == 1 else dict(zip(names, outputs, strict=True))

    def to_onnx(self, model: Any, example: Any) -> bytes:
        if isinstance(model, bytes):
            return model
        if hasattr(model, "SerializeToString"):
            data: bytes = model.SerializeToString()
            return data
        raise InvalidInput("a loaded ONNX session does not keep its bytes: use the model file")


def _session(model: Any) -> Any:
    import onnxruntime as ort

    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def _cast(array: np.ndarray[Any, Any], onnx_type: str) -> np.ndarray[Any, Any]:
    wanted = _TYPES.get(onnx_type)
    return array.astype(wanted) if wanted is not None and array.dtype != wanted else array
