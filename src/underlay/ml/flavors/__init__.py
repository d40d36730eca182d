"""Model flavors: one ``predict(batch)`` interface over scikit-learn, PyTorch and ONNX models,
and any other kind a package adds through the ``underlay.flavors`` entry-point group.

:func:`save_model` writes a model's files and ``underlay-model.json`` (its flavor, the
options to load it, its signature inferred from an input example) into a folder;
:func:`load_model` reads such a folder back as a :class:`LoadedModel`. A folder loaded from
the registry is ``verified`` (every file checked against a manifest this platform signed);
only then may a flavor load formats that run code (pickle, TorchScript, a module class).

Plugins: a package declares ``[project.entry-points."underlay.flavors"] name = "pkg:Cls"``;
the class follows :class:`~underlay.ml.flavors.base.Flavor`. Built-in flavors are tried
first when a flavor is inferred; a plugin cannot take a built-in name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from underlay.errors import InvalidInput
from underlay.ml.flavors.base import (
    Flavor,
    LoadContext,
    SaveContext,
    UnsignedArtifactRefused,
    UnsupportedFlavorOperation,
)
from underlay.ml.flavors.signature import Signature, infer_signature

log = logging.getLogger(__name__)

METADATA_FILE = "underlay-model.json"
FORMAT_VERSION = 1
ENTRY_POINT_GROUP = "underlay.flavors"

__all__ = [
    "METADATA_FILE",
    "Flavor",
    "LoadedModel",
    "ModelInfo",
    "Signature",
    "UnsignedArtifactRefused",
    "UnsupportedFlavorOperation",
    "flavor_named",
    "flavors",
    "infer_flavor",
    "load_model",
    "save_model",
]


def _builtins() -> list[Flavor]:
    from underlay.ml.flavors.onnx import OnnxFlavor
    from underlay.ml.flavors.sklearn import SklearnFlavor
    from underlay.ml.flavors.torch import TorchFlavor

    return [SklearnFlavor(), TorchFlavor(), OnnxFlavor()]


def flavors() -> list[Flavor]:
    """Every flavor: the built-in ones, then the plugins (a broken plugin is logged, skipped)."""
    found = _builtins()
    names = {f.name for f in found}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            flavor = point.load()()
        except Exception:  # a plugin's import error must not break the built-in flavors
            log.exception("flavor plugin %s could not be loaded", point.value)
            continue
        if not isinstance(flavor, Flavor) or not flavor.name or flavor.name in names:
            log.error("flavor plugin %s is not a flavor or reuses a name; skipped", point.value)
            continue
        names.add(flavor.name)
        found.append(flavor)
    return found


def flavor_named(name: str) -> Flavor:
    every = flavors()
    for flavor in every:
        if flavor.name == name:
            return flavor
    known = ", ".join(f.name for f in every)
    raise InvalidInput(f"no model flavor {name!r} (known: {known}); install its plugin package")


def infer_flavor(model: object) -> Flavor:
    every = flavors()
    for flavor in every:
        if flavor.handles(model):
            return flavor
    known = ", ".join(f.name for f in every)
    raise InvalidInput(
        f"no model flavor handles a {type(model).__module__}.{type(model).__qualname__} "
        f"(flavors: {known}); name one with flavor=..., or add one by plugin"
    )


@dataclass(frozen=True)
class ModelInfo:
    """What ``underlay-model.json`` says of a saved model."""

    flavor: str
    options: dict[str, Any]
    signature: Signature | None
    files: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "underlay_model": FORMAT_VERSION,
            "flavor": self.flavor,
            "options": self.options,
            "signature": self.signature.to_dict() if self.signature else None,
            "files": self.files,
        }

    @classmethod
    def read(cls, folder: Path) -> ModelInfo:
        path = folder / METADATA_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidInput(f"{folder} holds no {METADATA_FILE}: not a saved model") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"{path} is not readable JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("underlay_model") != FORMAT_VERSION:
            raise InvalidInput(f"{path} is not an underlay model description (version 1)")
        options = raw.get("options") or {}
        files = raw.get("files") or []
        if not isinstance(options, dict) or not isinstance(files, list):
            raise InvalidInput(f"{path}: 'options' must be an object and 'files' a list")
        return cls(
            flavor=str(raw.get("flavor", "")),
            options=options,
            signature=Signature.from_dict(raw.get("signature")),
            files=[str(f) for f in files],
        )


class LoadedModel:
    """A model of any flavor behind one interface: :meth:`predict` and its signature."""

    def __init__(self, flavor: Flavor, model: Any, info: ModelInfo) -> None:
        self.flavor = flavor.name
        self.model = model
        self.info = info
        self._flavor = flavor

    @property
    def signature(self) -> Signature | None:
        return self.info.signature

    def predict(self, batch: Any) -> Any:
        """The model's predictions for ``batch`` (a numpy array, list of rows, mapping of
        names to arrays, or a table)."""
        return self._flavor.predict(self.model, batch)

    def to_onnx(self, example: Any) -> bytes:
        """The model converted to ONNX (flavors that declare ``"onnx"`` support)."""
        return self._flavor.to_onnx(self.model, example)

    def __repr__(self) -> str:
        return f"<LoadedModel flavor={self.flavor} model={type(self.model).__name__}>"


def save_model(
    model: Any,
    folder: Path,
    *,
    flavor: str | None = None,
    input_example: Any = None,
    **options: Any,
) -> ModelInfo:
    """Write ``model``'s files and ``underlay-model.json`` into ``folder`` (created if new).

    The flavor is inferred unless named; with ``input_example`` the signature is inferred
    from it and from the model's prediction for it. ``options`` go to the flavor (PyTorch:
    ``init_kwargs``)."""
    chosen = flavor_named(flavor) if flavor else infer_flavor(model)
    folder.mkdir(parents=True, exist_ok=True)
    before = {p for p in folder.rglob("*") if p.is_file()}
    saved = chosen.save(SaveContext(model, folder, input_example, dict(options)))
    signature = None
    if input_example is not None:
        output = chosen.predict(model, input_example)
        signature = infer_signature(input_example, output)
    written = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p not in before
    )
    info = ModelInfo(chosen.name, saved, signature, written)
    text = json.dumps(info.to_dict(), indent=2, sort_keys=True, allow_nan=False)
    (folder / METADATA_FILE).write_text(text + "\n", encoding="utf-8")
    return info


def load_model(folder: Path, *, verified: bool = False) -> LoadedModel:
    """The model saved in ``folder``. ``verified`` is for the registry's loader alone: it
    means every file was checked against a manifest this platform signed."""
    info = ModelInfo.read(folder)
    chosen = flavor_named(info.flavor)
    model = chosen.load(LoadContext(folder, info.options, verified))
    return LoadedModel(chosen, model, info)
