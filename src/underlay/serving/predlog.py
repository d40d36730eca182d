"""Prediction logs: a sampled record of what a deployment was asked and answered, written in
batches to a Delta table of the deployment's project, which monitoring reads.

Two parts, so the hot path holds nothing but an append to a list:

* :class:`PredictionLogger` (one per deployment, in the data plane). :meth:`~PredictionLogger.
  record` draws whether to sample the request (``sample_rate``) and, if so, appends a
  reference to its inputs and outputs to a bounded buffer; it never blocks, never raises, and
  copies nothing. A background thread turns the buffer into one Arrow table every
  ``batch_rows`` rows or ``flush_interval_s`` seconds, whichever comes first, and hands it to
  the writer. A full buffer drops the request and counts it; a failed write counts its rows;
  both are in :meth:`~PredictionLogger.stats` and logged as warnings, never silent.
* :class:`~underlay.serving.predlog_writer.PredictionTableWriter` (the writer, in
  :mod:`underlay.serving.predlog_writer`): appends such a table to the deployment's log
  table through the data layer (:meth:`underlay.data.tables.TableStore.write`, so a log
  version is a table version like any other: atomic, versioned, readable by SQL), with the
  input columns masked by the PII policies of the tables the model version was trained on,
  found through lineage (``table_version --input--> run --produced--> model_version``, and the
  registry's direct ``trained`` edges). Every other column is classified as on any ingest,
  so PII the training table did not have is tokenised by default.

The log table, ``<deployment>_predictions`` (see :func:`predictions_table`), one row per
input row of a sampled request:

==================  ========================  =============================================
column              type                      what
==================  ========================  =============================================
``request_id``      string                    the request's id (the ``X-Request-Id``)
``row``             int32                     the row's index within the request
``ts``              timestamp[us, UTC]        when the request was answered
``deployment``      string                    the deployment's name
``model``           string                    the registered model's name
``model_version``   int64                     the version that answered
``arm``             string                    ``stable`` or ``canary``
``latency_ms``      float64                   the request's latency
``in_<input>``      per input                 each input, masked by the training policies
``out_<output>``    per output                each output (``out_prediction`` for a list)
==================  ========================  =============================================

A tensor input of more than one dimension per row is a list column. Later writes keep the
types the first write stored (a value is cast to the stored type); a new input or output
column (a canary with another signature) is added by schema evolution, and rows without it
hold nulls.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from underlay.errors import InvalidInput

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

Writer = Callable[[pa.Table], None]
Inputs = Mapping[str, Any] | Sequence[Mapping[str, Any]]
Outputs = Mapping[str, Any] | Sequence[Any]

PREDICTIONS_SUFFIX = "_predictions"
FEEDBACK_SUFFIX = "_feedback"
INPUT_PREFIX = "in_"
OUTPUT_PREFIX = "out_"
META = ("request_id", "row", "ts", "deployment", "model", "model_version", "arm", "latency_ms")


def _table_name(deployment: str, suffix: str) -> str:
    """``<deployment><suffix>`` (a table name holds at most 63 characters: a longer
    deployment name is cut and given 8 hex digits of its hash, so names stay distinct)."""
    name = f"{deployment}{suffix}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(deployment.encode()).hexdigest()[:8]
    return f"{deployment[: 63 - len(suffix) - 9]}-{digest}{suffix}"


def predictions_table(deployment: str) -> str:
    """The name of a deployment's prediction log table."""
    return _table_name(deployment, PREDICTIONS_SUFFIX)


def feedback_table(deployment: str) -> str:
    """The name of a deployment's feedback table (:mod:`underlay.serving.feedback`)."""
    return _table_name(deployment, FEEDBACK_SUFFIX)


# -- the logger (data plane) -----------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    request_id: str
    inputs: Inputs
    outputs: Outputs
    latency_ms: float
    model: str
    model_version: int
    arm: str
    now: float
    rows: int


class PredictionLogger:
    """Samples requests into a bounded buffer that a background thread writes in batches.

    ``writer`` gets one Arrow table per batch (the schema: the module docstring) and may
    raise; ``sample_rate`` in [0, 1] is the share of requests logged; ``max_buffer_rows``
    bounds what waits for the writer (a request that does not fit is dropped and counted).
    ``seed`` makes the sampling draws reproducible; a caller may also pass its own draw ``u``
    to :meth:`record`. Call :meth:`start` to run the background thread (without it, only
    :meth:`flush` writes), :meth:`close` to stop it after a last flush.
    """

    def __init__(
        self,
        writer: Writer,
        *,
        sample_rate: float,
        deployment: str,
        model: str = "",
        batch_rows: int = 10_000,
        flush_interval_s: float = 10.0,
        max_buffer_rows: int = 200_000,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise InvalidInput(f"a sample rate is between 0 and 1 (got {sample_rate!r})")
        if batch_rows < 1 or max_buffer_rows < batch_rows or flush_interval_s <= 0:
            raise InvalidInput("prediction log: need 1 <= batch_rows <= max_buffer_rows")
        self.writer = writer
        self.sample_rate = sample_rate
        self.deployment = deployment
        self.model = model
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.max_buffer_rows = max_buffer_rows
        self._random = random.Random(seed)
        self._buffer: list[_Entry] = []
        self._buffered_rows = 0
        self._lock = threading.Lock()  # guards the buffer and the counters
        self._write_lock = threading.Lock()  # one write at a time (thread or flush)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counts = dict.fromkeys(
            (
                "seen_requests",
                "sampled_requests",
                "logged_rows",
                "dropped_requests",
                "dropped_rows",
                "failed_rows",
                "writes",
            ),
            0,
        )
        self._last_error: str | None = None
        self._warned_drops = 0

    # -- the hot path ------------------------------------------------------------------------

    def record(
        self,
        request_id: str,
        inputs: Inputs,
        outputs: Outputs,
        latency_ms: float,
        model_version: int,
        now: float,
        *,
        arm: str = "stable",
        model: str | None = None,
        u: float | None = None,
    ) -> bool:
        """Log one answered request if it is sampled; returns whether it was buffered.

        ``inputs``: the request's arrays by input name (rows along axis 0) or its records;
        ``outputs``: arrays by output name or a list of predictions. Nothing is copied: the
        caller must not change them afterwards. Never raises, never blocks on the writer."""
        if self._stop.is_set():  # closed: the deployment changed or went
            with self._lock:
                self._counts["seen_requests"] += 1
                self._counts["dropped_requests"] += 1
            return False
        try:
            draw = self._random.random() if u is None else u
            if draw >= self.sample_rate:
                with self._lock:
                    self._counts["seen_requests"] += 1
                return False
            rows = _row_count(inputs)
            entry = _Entry(
                request_id,
                inputs,
                outputs,
                float(latency_ms),
                self.model if model is None else model,
                int(model_version),
                arm,
                float(now),
                rows,
            )
            with self._lock:
                self._counts["seen_requests"] += 1
                self._counts["sampled_requests"] += 1
                if self._buffered_rows + rows > self.max_buffer_rows:
                    self._counts["dropped_requests"] += 1
                    self._counts["dropped_rows"] += rows
                    return False
                self._buffer.append(entry)
                self._buffered_rows += rows
                full = self._buffered_rows >= self.batch_rows
            if full:
                self._wake.set()
            return True
        except Exception as error:  # logging must never fail a request
            with self._lock:
                self._counts["seen_requests"] += 1
                self._counts["sampled_requests"] += 1
                self._counts["dropped_requests"] += 1
                self._last_error = f"a request could not be logged: {error}"[:500]
            return False

    # -- the background side -----------------------------------------------------------------

    def start(self) -> None:
        """Run the background writer thread (once)."""
        if self._thread is None:
            name = f"predlog-{self.deployment}"
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()
        self.flush()  # what came in during the last write

    def flush(self) -> int:
        """Write what is buffered now (in the caller's thread); returns the rows written."""
        with self._write_lock:
            with self._lock:
                entries, self._buffer, self._buffered_rows = self._buffer, [], 0
            self._warn_drops()
            if not entries:
                return 0
            rows = sum(e.rows for e in entries)
            try:
                table = build_table(entries, self.deployment)
                self.writer(table)
            except Exception as error:  # counted, reported, never raised
                with self._lock:
                    self._counts["failed_rows"] += rows
                    self._last_error = f"{type(error).__name__}: {error}"[:500]
                log.warning(
                    "prediction log of %s: %d rows could not be written: %s",
                    self.deployment,
                    rows,
                    self._last_error,
                )
                return 0
            written: int = table.num_rows
            with self._lock:
                self._counts["logged_rows"] += written
                self._counts["writes"] += 1
            return written

    def _warn_drops(self) -> None:
        with self._lock:
            dropped = self._counts["dropped_requests"]
        if dropped > self._warned_drops:
            log.warning(
                "prediction log of %s: %d sampled requests dropped so far (buffer full: %d rows)",
                self.deployment,
                dropped,
                self.max_buffer_rows,
            )
            self._warned_drops = dropped

    def close(self, timeout_s: float = 30.0, *, wait: bool = True) -> None:
        """Stop taking requests and write what is left: here, waiting for the thread at most
        ``timeout_s``; or, with ``wait`` False (from an event loop, which must not block on
        a write), in the background thread, returning at once."""
        self._stop.set()
        self._wake.set()
        if not wait and self._thread is not None:
            return
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.flush()

    def stats(self) -> dict[str, Any]:
        """Counters: requests seen and sampled, rows logged, dropped (buffer full) and failed
        (a write that raised), the rows waiting, and the last error."""
        with self._lock:
            return {
                **self._counts,
                "pending_rows": self._buffered_rows,
                "sample_rate": self.sample_rate,
                "last_error": self._last_error,
            }


def _row_count(inputs: Inputs) -> int:
    if isinstance(inputs, Mapping):
        for value in inputs.values():
            return len(value)
        return 0
    return len(inputs)


# -- buffered entries to Arrow ---------------------------------------------------------------


def _as_columns(data: Inputs | Outputs, rows: int, prefix: str) -> dict[str, Any]:
    """One entry's inputs or outputs as ``{column: ndarray or list}`` of ``rows`` values."""
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for name, value in data.items():
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
            if array.ndim == 0:
                array = np.repeat(array, rows)
            out[f"{prefix}{name}"] = array if array.ndim == 1 else list(array.tolist())
        return out
    values = list(data)
    if values and isinstance(values[0], Mapping):
        names = dict.fromkeys(k for record in values for k in record)
        return {f"{prefix}{k}": [record.get(k) for record in values] for k in names}
    return {f"{prefix}prediction": [_plain(v) for v in values]}


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value


def build_table(entries: Sequence[_Entry], deployment: str) -> pa.Table:
    """The log rows of ``entries`` (the schema: the module docstring). Entries are grouped
    by the names of their inputs and outputs (one group per model signature, as a rule), so
    each column of a group is one concatenation of its arrays."""
    groups: dict[tuple[Any, Any], list[_Entry]] = {}
    for entry in entries:
        key = (_names(entry.inputs), _names(entry.outputs))
        groups.setdefault(key, []).append(entry)
    tables = [_group_table(group, deployment) for group in groups.values()]
    if not tables:
        return _group_table([], deployment)
    return pa.concat_tables(tables, promote_options="default")  # missing columns: nulls


def _names(data: Inputs | Outputs) -> tuple[str, ...] | None:
    """The names of arrays by name; None for records or a list (built row by row)."""
    return tuple(data) if isinstance(data, Mapping) else None


_META_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("row", pa.int32()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("deployment", pa.string()),
        ("model", pa.string()),
        ("model_version", pa.int64()),
        ("arm", pa.string()),
        ("latency_ms", pa.float64()),
    ]
)


def _group_table(group: Sequence[_Entry], deployment: str) -> pa.Table:
    if not group:
        return _META_SCHEMA.empty_table()
    counts = np.fromiter((e.rows for e in group), np.int64, len(group))
    total = int(counts.sum())
    columns: dict[str, Any] = {}
    for side, prefix in (("inputs", INPUT_PREFIX), ("outputs", OUTPUT_PREFIX)):
        first = getattr(group[0], side)
        try:
            if _names(first) is None:
                raise TypeError("records")
            mappings = [getattr(e, side) for e in group]
            for name in first:
                parts = [m[name] for m in mappings]
                columns[f"{prefix}{name}"] = _concatenated(parts, counts)
        except (TypeError, ValueError, pa.ArrowException):
            # not one 1-D array per request and name: value by value (names the bad one)
            columns.update(_rowwise(group, side, prefix))

    def each(values: list[Any], type_: pa.DataType) -> pa.Array:
        return pa.array(np.repeat(np.array(values), counts), type_)

    stamps = np.repeat(np.fromiter((e.now for e in group), np.float64, len(group)), counts)
    meta = {
        "request_id": each([e.request_id for e in group], pa.string()),
        "row": pa.array(
            (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)).astype(np.int32)
        ),
        "ts": pa.array((stamps * 1_000_000).astype(np.int64)).cast(pa.timestamp("us", tz="UTC")),
        "deployment": pa.array([deployment] * total, pa.string()),
        "model": each([e.model for e in group], pa.string()),
        "model_version": each([e.model_version for e in group], pa.int64()),
        "arm": each([e.arm for e in group], pa.string()),
        "latency_ms": each([e.latency_ms for e in group], pa.float64()),
    }
    return pa.table({**meta, **dict(sorted(columns.items()))})


def _rowwise(group: Sequence[_Entry], side: str, prefix: str) -> dict[str, pa.Array]:
    """Columns built value by value: records, lists of predictions, tensors of rows."""
    data: dict[str, list[Any]] = {}
    done = 0
    for entry in group:
        found = _as_columns(getattr(entry, side), entry.rows, prefix)
        for name, values in found.items():
            if len(values) != entry.rows:
                raise InvalidInput(f"{name} has {len(values)} rows, the request {entry.rows}")
            if name not in data:  # new in this entry: the rows before it hold nulls
                data[name] = [None] * done
        for name, values in data.items():
            new = found.get(name)
            values.extend([None] * entry.rows if new is None else _listed(new))
        done += entry.rows
    return {name: pa.array(values) for name, values in data.items()}


def _listed(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _concatenated(parts: list[Any], counts: np.ndarray) -> pa.Array:
    """One column from one 1-D array per request (else TypeError or ValueError)."""
    lengths = np.fromiter(map(len, parts), np.int64, len(parts))
    if not np.array_equal(lengths, counts):
        raise ValueError("a request's column has another number of rows than the request")
    joined = np.concatenate(parts)
    if joined.ndim != 1:
        raise ValueError("a tensor of rows")
    return pa.array(joined)
