"""The flavor plugin interface: how one kind of model is saved, loaded and described.

A flavor is a class with a ``name``, what it ``supports`` and four methods, each taking one
context argument (the plugin habit of the codebase):

* ``handles(model)`` — whether it can save this in-memory object (used to infer the flavor);
* ``save(ctx: SaveContext)`` — write the model's files into ``ctx.folder``; returns the
  options (JSON-safe) that ``load`` needs back;
* ``load(ctx: LoadContext)`` — rebuild the model from ``ctx.folder`` and ``ctx.options``;
  ``ctx.verified`` says whether every file was checked against a manifest signed by this
  platform. A flavor that would run code from its files (pickle, TorchScript, a class named
  in the options) must refuse when it is False.
* ``predict(model, batch)`` — the one prediction call of every flavor.

``supports`` declares optional abilities (``"onnx"``: :meth:`to_onnx` converts); an
unsupported call raises :class:`UnsupportedFlavorOperation`, saying what to do instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from underlay.errors import InvalidInput


class UnsupportedFlavorOperation(InvalidInput):
    """The flavor does not support what was asked of it."""


class UnsignedArtifactRefused(InvalidInput):
    """Loading would run code from files that no platform signature vouches for."""


@dataclass
class SaveContext:
    """What a flavor's ``save`` gets: the model, where to write, and the caller's options."""

    model: Any
    folder: Path
    input_example: Any = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadContext:
    """What a flavor's ``load`` gets: the folder, the options ``save`` returned, and whether
    the files were verified against a manifest this platform signed."""

    folder: Path
    options: dict[str, Any]
    verified: bool = False


@runtime_checkable
class Flavor(Protocol):
    name: ClassVar[str]
    supports: ClassVar[frozenset[str]]

    def handles(self, model: object) -> bool: ...

    def save(self, ctx: SaveContext) -> dict[str, Any]: ...

    def load(self, ctx: LoadContext) -> Any: ...

    def predict(self, model: Any, batch: Any) -> Any: ...

    def to_onnx(self, model: Any, example: Any) -> bytes: ...


class FlavorBase:
    """Defaults for the optional parts of :class:`Flavor`."""

    name: ClassVar[str] = ""
    supports: ClassVar[frozenset[str]] = frozenset()

    def to_onnx(self, model: Any, example: Any) -> bytes:
        raise UnsupportedFlavorOperation(
            f"the {self.name} flavor cannot convert to ONNX: convert the model yourself and "
            "log the ONNX model (flavor 'onnx')"
        )


def refuse_unverified(ctx: LoadContext, what: str) -> None:
    """Refuse to run code from ``what`` unless the files were verified (see the docstring)."""
    if not ctx.verified:
        raise UnsignedArtifactRefused(
            f"refusing to load {what} from {ctx.folder}: it can run code, and only artifacts "
            "this platform signed may do so; load it from the registry "
            "(underlay.load_model) so its signature and hashes are checked"
        )
