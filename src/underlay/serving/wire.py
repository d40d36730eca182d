"""The binary form batches travel in between the server and a replica.

One frame: a 4-byte little-endian header length, a JSON header listing each tensor's name,
dtype (numpy ``dtype.str``) and shape, then each tensor's bytes in C order, one after the
other. Numbers and fixed-width text (``<U``) only: an object array is refused, so nothing
pickled ever crosses. Decoding is ``np.frombuffer`` over the body: no per-row work at all.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np

from underlay.errors import InvalidInput

CONTENT_TYPE = "application/x-underlay-tensors"
_KINDS = frozenset("biufU")
_LEN = struct.Struct("<I")
MAX_HEADER = 1 << 20


def _plain(name: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "O":
        try:
            array = array.astype(str)
        except (TypeError, ValueError):
            raise InvalidInput(
                f"input {name!r} holds values that are not numbers or text"
            ) from None
    if array.dtype.kind not in _KINDS:
        raise InvalidInput(f"input {name!r} has dtype {array.dtype}, which cannot be sent")
    return np.ascontiguousarray(array)


def encode(tensors: Mapping[str, np.ndarray]) -> bytes:
    """``tensors`` as one frame (see the module docstring)."""
    arrays = {name: _plain(name, np.asarray(value)) for name, value in tensors.items()}
    header = json.dumps(
        [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()], separators=(",", ":")
    ).encode()
    parts = [_LEN.pack(len(header)), header]
    parts.extend(a.tobytes() for a in arrays.values())
    return b"".join(parts)


def decode(frame: bytes) -> dict[str, np.ndarray]:
    """The tensors of a frame; :class:`InvalidInput` for anything malformed."""
    try:
        (size,) = _LEN.unpack_from(frame, 0)
        if size > MAX_HEADER:
            raise ValueError("header too long")
        header = json.loads(frame[4 : 4 + size])
        offset = 4 + size
        tensors: dict[str, np.ndarray] = {}
        for name, dtype_text, shape in header:
            dtype = np.dtype(dtype_text)
            if dtype.kind not in _KINDS:
                raise ValueError(f"dtype {dtype_text} is not allowed")
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            nbytes = count * dtype.itemsize
            if offset + nbytes > len(frame):
                raise ValueError("the frame is shorter than its header says")
            data = np.frombuffer(frame, dtype=dtype, count=count, offset=offset)
            tensors[str(name)] = data.reshape(shape)
            offset += nbytes
    except (struct.error, ValueError, TypeError, KeyError) as exc:
        raise InvalidInput(f"malformed tensor frame: {exc}") from None
    return tensors
