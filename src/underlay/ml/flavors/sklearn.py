"""The scikit-learn flavor: skops files first, pickle only where skops cannot go.

``save`` writes ``model.skops`` and records the types in it that skops does not trust by
default (a user's own transformer, say). ``load`` of a verified artifact trusts exactly
those recorded types (the record is covered by the signed manifest); an unverified folder
loads only with skops' default trusted types, and names the others if the file holds any.
An estimator skops cannot serialise falls back to ``model.pkl``, which is loaded only from a
verified artifact (never an unsigned pickle).
"""

from __future__ import annotations

import pickle
from typing import Any, ClassVar

import numpy as np

from underlay.errors import InvalidInput
from underlay.ml.flavors.base import FlavorBase, LoadContext, SaveContext, refuse_unverified
from underlay.ml.flavors.signature import as_tensors

SKOPS_FILE = "model.skops"
PICKLE_FILE = "model.pkl"


class SklearnFlavor(FlavorBase):
    name: ClassVar[str] = "sklearn"
    supports: ClassVar[frozenset[str]] = frozenset({"onnx"})

    def handles(self, model: object) -> bool:
        module = type(model).__module__
        return module.split(".")[0] == "sklearn" or (
            hasattr(model, "fit") and hasattr(model, "predict") and hasattr(model, "get_params")
        )

    def save(self, ctx: SaveContext) -> dict[str, Any]:
        import skops.io as sio

        path = ctx.folder / SKOPS_FILE
        try:
            sio.dump(ctx.model, path)
            untrusted = sorted(sio.get_untrusted_types(file=path))
        except Exception as exc:  # skops refuses what it cannot represent safely
            path.unlink(missing_ok=True)
            if ctx.options.get("allow_pickle") is False:
                raise InvalidInput(f"skops cannot save this model ({exc})") from None
            with (ctx.folder / PICKLE_FILE).open("wb") as handle:
                pickle.dump(ctx.model, handle, protocol=pickle.HIGHEST_PROTOCOL)
            return {"format": "pickle", "file": PICKLE_FILE, "sklearn": _version()}
        return {
            "format": "skops",
            "file": SKOPS_FILE,
            "trusted_types": untrusted,
            "sklearn": _version(),
        }

    def load(self, ctx: LoadContext) -> Any:
        fmt = ctx.options.get("format")
        if fmt == "pickle":
            refuse_unverified(ctx, f"the pickled scikit-learn model {PICKLE_FILE}")
            with (ctx.folder / PICKLE_FILE).open("rb") as handle:
                return pickle.load(handle)  # noqa: S301 - verified against a signed manifest
        if fmt != "skops":
            raise InvalidInput(f"unknown scikit-learn model format {fmt!r}")
        import skops.io as sio

        path = ctx.folder / SKOPS_FILE
        untrusted = sorted(sio.get_untrusted_types(file=path))
        recorded = [str(t) for t in ctx.options.get("trusted_types", [])]
        extra = [t for t in untrusted if not ctx.verified or t not in recorded]
        if extra:
            why = "is not signed by this platform" if not ctx.verified else "was altered"
            raise InvalidInput(
                f"{path.name} holds types skops does not trust ({', '.join(extra[:5])}) and "
                f"the artifact {why}: refusing to load it"
            )
        return sio.load(path, trusted=untrusted or None)

    def predict(self, model: Any, batch: Any) -> Any:
        return model.predict(_matrix(batch))

    def to_onnx(self, model: Any, example: Any) -> bytes:
        from skl2onnx import to_onnx
        from sklearn.base import is_classifier

        options = {id(model): {"zipmap": False}} if is_classifier(model) else None
        onx = to_onnx(model, _matrix(example)[:1].astype(np.float32), options=options)
        data: bytes = onx.SerializeToString()
        return data


def _matrix(batch: Any) -> Any:
    """A batch as scikit-learn wants it: a 2-D array, named columns side by side."""
    if isinstance(batch, np.ndarray):
        return batch
    tensors = as_tensors(batch)
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    return np.column_stack(list(tensors.values()))


def _version() -> str:
    import sklearn

    return str(sklearn.__version__)
