"""JSON form of snapshots and decisions, so a round can be stored, shipped and replayed.

The live loop logs the snapshot behind each round; ``snapshot_from_json(log)`` then gives
back the exact input, and ``decide`` gives back the exact decisions. Encoding is
:func:`dataclasses.asdict`; decoding walks the dataclass type hints, so the format follows the
types with no second schema to keep in step, and a malformed document is an
:class:`~underlay.errors.InvalidInput` that names the path of the bad field.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

from underlay.compute.scheduler.decisions import Decisions
from underlay.compute.scheduler.snapshot import Snapshot
from underlay.errors import InvalidInput

T = TypeVar("T")


def to_json(obj: Snapshot | Decisions) -> str:
    """A snapshot or decisions as a JSON document."""
    return json.dumps(dataclasses.asdict(obj), separators=(",", ":"))


def snapshot_from_json(text: str) -> Snapshot:
    return _load(Snapshot, text)


def decisions_from_json(text: str) -> Decisions:
    return _load(Decisions, text)


def _load(cls: type[T], text: str) -> T:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"not a JSON document: {exc}") from exc
    return typing.cast(T, _decode(cls, data, cls.__name__))


def _decode(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _decode_dataclass(hint, value, path)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                return _decode(option, value, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise InvalidInput(f"{path}: expected a list, got {type(value).__name__}")
        (item, _ellipsis) = typing.get_args(hint)
        return tuple(_decode(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            allowed = ", ".join(map(repr, typing.get_args(hint)))
            raise InvalidInput(f"{path}: {value!r} is not one of {allowed}")
        return value
    return _decode_scalar(hint, value, path)


def _decode_scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise InvalidInput(f"{path}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _decode_dataclass(cls: type, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise InvalidInput(f"{path}: expected an object, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise InvalidInput(f"{path}: unknown field(s) {', '.join(unknown)}")
    kwargs = {name: _decode(hints[name], item, f"{path}.{name}") for name, item in value.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InvalidInput(f"{path}: {exc}") from exc
