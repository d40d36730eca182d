"""How a step's outputs become bytes, and back: safe formats first.

============  ===========================================================  ================
format        what                                                         loads with
============  ===========================================================  ================
``parquet``   a ``pyarrow.Table`` or ``RecordBatch``, a pandas DataFrame   pyarrow
``npy``       a numpy array of numbers                                     ``allow_pickle=False``
``json``      None, bools, numbers, strings, and lists/dicts of them       ``json``
``pickle``    anything else (a fitted model, ...): the last resort         only when signed
============  ===========================================================  ================

A pickle is loaded only when the platform signed it (:func:`signed_payload`): the server signs
``(project, digest)`` of a pickle output when the step that wrote it finishes, and a reader
checks that signature against the platform's public key before unpickling. A pickle that
arrives any other way (a blob uploaded by hand, another project's output, a record whose
signature was altered) is refused, not loaded. The bytes themselves are stored as the
project's blobs (encrypted at rest, content-addressed, verified on read).
"""

from __future__ import annotations

import io
import json
import math
from typing import Any, Literal

from underlay.errors import IntegrityFailure, InvalidInput

Format = Literal["parquet", "npy", "json", "pickle"]
FORMATS: tuple[str, ...] = ("parquet", "npy", "json", "pickle")
MEDIA = {
    "parquet": "application/vnd.apache.parquet",
    "npy": "application/x-npy",
    "json": "application/json",
    "pickle": "application/x-python-pickle",
}
_SIGNED_LABEL = b"underlay.ml.pipeline-output.v1\x00"


def dump(value: Any) -> tuple[Format, bytes]:
    """``value`` in the safest format that holds it."""
    table = _as_table(value)
    if table is not None:
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(table, sink)
        return "parquet", sink.getvalue()
    if _is_numeric_array(value):
        import numpy as np

        sink = io.BytesIO()
        np.save(sink, value, allow_pickle=False)
        return "npy", sink.getvalue()
    if _is_json(value):
        return "json", json.dumps(value, sort_keys=True, allow_nan=False).encode()
    import pickle

    try:
        return "pickle", pickle.dumps(value, protocol=5)
    except Exception as error:
        raise InvalidInput(
            f"output of type {type(value).__name__} cannot be stored: {error}"
        ) from None


def load(fmt: str, data: bytes, *, signed: bool = False) -> Any:
    """The value back; ``signed`` says the caller checked the platform's signature (a pickle
    is refused without it)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data))
    if fmt == "npy":
        import numpy as np

        return np.load(io.BytesIO(data), allow_pickle=False)
    if fmt == "json":
        return json.loads(data)
    if fmt == "pickle":
        if not signed:
            raise IntegrityFailure("refusing to unpickle an output the platform has not signed")
        import pickle

        return pickle.loads(data)  # noqa: S301 - signed by this platform (see the docstring)
    raise InvalidInput(f"unknown output format {fmt!r} (known: {', '.join(FORMATS)})")


def signed_payload(project_id: int, digest: str) -> bytes:
    """What the platform signs for a pickle output: a label, the project and the digest, so
    a signature is valid for those bytes in that project only."""
    return _SIGNED_LABEL + f"{project_id}\x00{digest}".encode()


def _as_table(value: Any) -> Any:
    import sys

    if "pyarrow" in sys.modules:
        import pyarrow as pa

        if isinstance(value, pa.Table):
            return value
        if isinstance(value, pa.RecordBatch):
            return pa.Table.from_batches([value])
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(value, pandas.DataFrame):
        import pyarrow as pa

        return pa.Table.from_pandas(value, preserve_index=False)
    return None


def _is_numeric_array(value: Any) -> bool:
    import sys

    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray) and value.dtype.kind in "biufc"


def _is_json(value: Any, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_json(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v, depth + 1) for k, v in value.items())
    return False


def metrics_of(value: Any) -> dict[str, float]:
    """The numbers of a dict a step returned (finite ints and floats, not bools): what a
    sweep can pick its best trial by."""
    if not isinstance(value, dict):
        return {}
    found: dict[str, float] = {}
    for key, item in value.items():
        number = isinstance(item, (int, float)) and not isinstance(item, bool)
        if isinstance(key, str) and number and math.isfinite(item):
            found[key] = float(item)
    return found
