"""The PyTorch flavor (the ``[torch]`` extra): weights as safetensors, never a pickle.

The rule for rebuilding the module, one of two:

* **A module class importable by path** (the default). ``save`` records
  ``module.path:ClassName`` and ``init_kwargs`` (JSON, passed as ``log_model(...,
  init_kwargs={...})``) and writes ``state_dict()`` to ``weights.safetensors``. ``load``
  imports the class, checks it is a ``torch.nn.Module`` subclass, builds it with the kwargs
  and loads the weights (strictly). A class defined in ``__main__`` or inside a function
  cannot be imported elsewhere and is refused at save time, with what to do.
* **TorchScript**, for a ``torch.jit.ScriptModule``: ``model.pt`` from ``torch.jit.save``
  (TorchScript is deprecated upstream since torch 2.10; prefer the class path).

Both run code on load (an import, TorchScript's program), so both load only from a verified
artifact. The safetensors weights themselves are plain tensors.
"""

from __future__ import annotations

import importlib
import json
import warnings
from typing import Any, ClassVar

import numpy as np

from underlay.errors import InvalidInput
from underlay.ml.flavors.base import FlavorBase, LoadContext, SaveContext, refuse_unverified
from underlay.ml.flavors.signature import as_tensors

WEIGHTS_FILE = "weights.safetensors"
SCRIPT_FILE = "model.pt"


class TorchFlavor(FlavorBase):
    name: ClassVar[str] = "pytorch"
    supports: ClassVar[frozenset[str]] = frozenset({"onnx"})

    def handles(self, model: object) -> bool:
        return any(
            f"{c.__module__}.{c.__qualname__}" == "torch.nn.modules.module.Module"
            for c in type(model).__mro__
        )

    def save(self, ctx: SaveContext) -> dict[str, Any]:
        import torch

        model = ctx.model
        if isinstance(model, torch.jit.ScriptModule):
            with warnings.catch_warnings():  # TorchScript is deprecated upstream, still loads
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.jit.save(model, str(ctx.folder / SCRIPT_FILE))
            return {"format": "torchscript", "file": SCRIPT_FILE, "torch": torch.__version__}
        from safetensors.torch import save_file

        cls = type(model)
        if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
            raise InvalidInput(
                f"PyTorch module class {cls.__qualname__} is defined in "
                f"{'__main__' if cls.__module__ == '__main__' else 'a function'}, so it cannot "
                "be imported to rebuild the model: move it into an importable module, or log "
                "torch.jit.script(model)"
            )
        init_kwargs = ctx.options.get("init_kwargs") or {}
        try:
            json.dumps(init_kwargs, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"init_kwargs must be JSON-serialisable: {exc}") from None
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(ctx.folder / WEIGHTS_FILE))
        return {
            "format": "state_dict",
            "file": WEIGHTS_FILE,
            "module_class": f"{cls.__module__}:{cls.__qualname__}",
            "init_kwargs": init_kwargs,
            "torch": torch.__version__,
        }

    def load(self, ctx: LoadContext) -> Any:
        import torch

        fmt = ctx.options.get("format")
        if fmt == "torchscript":
            refuse_unverified(ctx, f"the TorchScript program {SCRIPT_FILE}")
            script = str(ctx.folder / SCRIPT_FILE)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(script, map_location="cpu")  # type: ignore[no-untyped-call]
        elif fmt == "state_dict":
            path = str(ctx.options.get("module_class", ""))
            refuse_unverified(ctx, f"module class {path!r} (an import runs its code)")
            module = _build(path, ctx.options.get("init_kwargs") or {})
            from safetensors.torch import load_file

            weights = load_file(str(ctx.folder / WEIGHTS_FILE))
            module.load_state_dict(weights, strict=True)
        else:
            raise InvalidInput(f"unknown PyTorch model format {fmt!r}")
        module.eval()
        return module

    def predict(self, model: Any, batch: Any) -> Any:
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in _arrays(batch)}
        model.eval()
        with torch.no_grad():
            out = model(*tensors.values()) if len(tensors) == 1 else model(**tensors)
        if isinstance(out, dict):
            return {k: v.detach().cpu().numpy() for k, v in out.items()}
        if isinstance(out, tuple | list):
            return [v.detach().cpu().numpy() for v in out]
        return out.detach().cpu().numpy()

    def to_onnx(self, model: Any, example: Any) -> bytes:
        import io

        import torch

        args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for _, v in _arrays(example))
        buffer = io.BytesIO()
        model.eval()
        torch.onnx.export(model, args, buffer, dynamo=False)  # type: ignore[arg-type]
        return buffer.getvalue()


def _arrays(batch: Any) -> list[tuple[str, np.ndarray[Any, Any]]]:
    items = list(as_tensors(batch).items())
    return [(k, v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in items]


def _build(path: str, init_kwargs: dict[str, Any]) -> Any:
    import torch

    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise InvalidInput(f"module_class must be 'module.path:ClassName', got {path!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise InvalidInput(
            f"cannot import the model's module class {path!r} ({exc}): install the package "
            "that defines it"
        ) from None
    if not isinstance(target, type) or not issubclass(target, torch.nn.Module):
        raise InvalidInput(f"{path!r} is not a torch.nn.Module subclass; refusing to call it")
    return target(**init_kwargs)
