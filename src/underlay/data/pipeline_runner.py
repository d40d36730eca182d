"""Run a pipeline on the caller's side, through the SDK, and have the server record it.

The run uses exactly the client's permissions: sources are read with ``iter_table`` at the
versions pinned when the run starts, the result is written with ``write_table`` (so PII
masking, schema checks and every other rule of a write apply), and the server is told of the
start and the end (see :mod:`underlay.data.pipeline_runs`). The server runs none of it.

Memory stays bounded: each source, and each step's result, streams batch by batch into an
Arrow IPC file in a temporary folder; a SQL step reads those files as lazy Arrow datasets in
the sandboxed DuckDB of :mod:`underlay.data.sql` (which spills past its memory limit), a
Python step gets them batch by batch, and the output streams from the last file.

Everything after the start is inside an error boundary: a step that raises, a query DuckDB
refuses, or a write the server refuses ends the run as ``failed`` with the error, and
:func:`run` returns that record instead of raising.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from underlay.data.pipelines import Pipeline, Reject, Step, resolve_function
from underlay.data.schemas import PipelineRunRead
from underlay.errors import Conflict, InvalidInput, NotFound, UnderlayError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pads

    from underlay.client import Client

BATCH_ROWS = 65536
REJECTED_SUFFIX = "_rejected"


@dataclass
class _Report:
    rows_in: int = 0
    rows_rejected: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)


def pin(client: Client, project: str, spec: Pipeline) -> dict[str, tuple[str, int]]:
    """Each source's (table, version): the published version unless the spec names one."""
    pinned: dict[str, tuple[str, int]] = {}
    for alias, (table, version) in spec.source_refs().items():
        if version is None:
            version = client.table_info(project, table).version
            if version is None:
                raise NotFound(f"source {alias!r}: table {table!r} has no data yet")
        pinned[alias] = (table, version)
    return pinned


def run(
    client: Client,
    project: str,
    spec: Pipeline,
    *,
    job_id: int | None = None,
    engine: str = "local",
) -> PipelineRunRead:
    """Run ``spec`` here and return the run's record (``failed`` with the error when a step
    or the write fails). Raises only when the run cannot start (inputs unknown or not
    readable, no permission, a pipeline the engine cannot run). ``engine="ray"`` runs the
    steps with Ray Data on the cluster this process is connected to (see
    :mod:`underlay.data.pipeline_ray`)."""
    if engine not in ("local", "ray"):
        raise InvalidInput(f"engine {engine!r} must be local or ray")
    if engine == "ray":
        from underlay.data import pipeline_ray

        pipeline_ray.check(spec)
    if job_id is None and os.environ.get("UNDERLAY_JOB_ID", "").isdigit():
        job_id = int(os.environ["UNDERLAY_JOB_ID"])
    pinned = pin(client, project, spec)
    inputs = sorted({(table, version) for table, version in pinned.values()})
    record = client.create_pipeline_run(
        project,
        {
            "pipeline": spec.name,
            "spec_digest": spec.digest(),
            "inputs": [{"table": t, "version": v} for t, v in inputs],
            "output_table": spec.output.table,
            "job_id": job_id,
        },
    )
    started = time.monotonic()
    report = _Report()
    with _Lease(client, project, record.id, record.lease_s):
        return _run_recorded(client, project, spec, pinned, record.id, report, started, engine)


def _run_recorded(
    client: Client,
    project: str,
    spec: Pipeline,
    pinned: dict[str, tuple[str, int]],
    run_id: int,
    report: _Report,
    started: float,
    engine: str = "local",
) -> PipelineRunRead:
    finish: dict[str, Any]
    try:
        if engine == "ray":
            written = _execute_ray(client, project, spec, pinned, report)
        else:
            written = _execute(client, project, spec, pinned, report)
    except Exception as error:  # the user-code boundary: a failed run, not a crash
        finish = {"status": "failed", "error": _message(error).replace("\x00", "")[:2000]}
    except BaseException as error:  # Ctrl-C, or a stop the caller turned into one
        reason = f"interrupted ({error})" if str(error) else "interrupted"
        _finish(client, project, run_id, {"status": "failed", "error": reason}, report, started)
        raise
    else:
        finish = {
            "status": "succeeded",
            "output_version": written.version,
            "rows_out": written.rows_written,
            "rows_quarantined": written.rows_quarantined,
        }
    return _finish(client, project, run_id, finish, report, started)


class _Lease:
    """Renews the run's lease on a thread, every quarter of it, while the run runs here; if
    this process dies, the renewals stop and the server settles the run as failed."""

    def __init__(self, client: Client, project: str, run_id: int, lease_s: float | None) -> None:
        self._client, self._project, self._run_id = client, project, run_id
        self._every = max(0.1, (lease_s or 60.0) / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pipeline-lease", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._client.renew_pipeline_run_lease(self._project, self._run_id)
            except Conflict:
                return  # the run has ended: the finish reports how
            except UnderlayError:  # the server is unreachable for now: try again next time
                continue


def _finish(
    client: Client,
    project: str,
    run_id: int,
    body: dict[str, Any],
    report: _Report,
    started: float,
) -> PipelineRunRead:
    body.update(
        rows_in=report.rows_in,
        rows_rejected=report.rows_rejected,
        steps=report.steps,
        duration_s=round(time.monotonic() - started, 6),
    )
    return client.finish_pipeline_run(project, run_id, body)


def _message(error: BaseException) -> str:
    if isinstance(error, _StepFailed):
        return str(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _execute_ray(
    client: Client,
    project: str,
    spec: Pipeline,
    pinned: dict[str, tuple[str, int]],
    report: _Report,
) -> Any:
    from underlay.data import pipeline_ray

    for table, version in pinned.values():
        report.rows_in += client.table_pieces(project, table, version=version).rows
    return pipeline_ray.execute(client, project, spec, pinned, report.steps)


def _execute(
    client: Client,
    project: str,
    spec: Pipeline,
    pinned: dict[str, tuple[str, int]],
    report: _Report,
) -> Any:

    with tempfile.TemporaryDirectory(prefix="underlay-pipeline-") as tmp:
        folder = Path(tmp)
        frames: dict[str, Path] = {}
        for alias, (table, version) in pinned.items():
            stream = client.iter_table(project, table, version=version)
            schema = next(stream)
            frames[alias] = folder / f"{alias}.arrow"
            report.rows_in += _spill(frames[alias], schema, stream)
        rejects = _Rejects(folder / "_rejected.parquet")
        try:
            written = _transform_and_write(client, project, spec, frames, rejects, report)
        finally:
            rejects.close()
        if rejects.rows:
            target = f"{spec.output.table}{REJECTED_SUFFIX}"[:63]
            client.write_table(project, target, rejects.path)
        return written


def _transform_and_write(
    client: Client,
    project: str,
    spec: Pipeline,
    frames: dict[str, Path],
    rejects: _Rejects,
    report: _Report,
) -> Any:

    folder = next(iter(frames.values())).parent
    for index, step in enumerate(spec.transforms):
        frames[step.name] = folder / f"{step.name}.arrow"
        try:
            rows, rejected = _step(spec, index, step, frames, rejects)
        except Exception as error:
            raise _StepFailed(f"step {step.name!r}: {_message(error)}") from error
        report.rows_rejected += rejected
        report.steps.append(
            {"name": step.name, "kind": step.kind, "rows_out": rows, "rows_rejected": rejected}
        )
    output = _frame(frames[spec.result_name()])
    reader = output.scanner(batch_size=BATCH_ROWS).to_reader()
    return client.write_table(
        project, spec.output.table, reader, mode=spec.output.mode, key=spec.output.keys
    )


class _StepFailed(Exception):
    """A step raised; the message names the step (the type of the cause is in it already)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _step(
    spec: Pipeline, index: int, step: Step, frames: dict[str, Path], rejects: _Rejects
) -> tuple[int, int]:
    """Run one step into ``frames[step.name]``: (rows out, rows rejected)."""

    from underlay.config import DataSettings
    from underlay.data import sql as sandbox

    if step.sql is not None:

        def resolve(name: str, version: int | None) -> pads.Dataset:
            if version is not None or name not in frames or name == step.name:
                raise InvalidInput(f"{name!r} is no source or earlier step")
            return _frame(frames[name])

        result = sandbox.run(step.sql, resolve, DataSettings(), batch_rows=BATCH_ROWS)
        return _spill(frames[step.name], result.schema, result.batches), 0
    function = resolve_function(step, spec.folder)
    source = _frame(frames[spec.input_of(index)])
    batches = source.scanner(batch_size=BATCH_ROWS).to_batches()
    before = rejects.rows
    produced = _batches(function(batches), step.name, rejects)
    first = next(produced, None)
    schema = first.schema if first is not None else source.schema
    rows = _spill(frames[step.name], schema, _chain(first, produced))
    return rows, rejects.rows - before


def _chain(first: pa.RecordBatch | None, rest: Iterator[pa.RecordBatch]) -> Iterator[Any]:
    if first is not None:
        yield first
    yield from rest


def _batches(produced: Any, step: str, rejects: _Rejects) -> Iterator[pa.RecordBatch]:
    """What a Python step yields, as record batches; :class:`Reject` items go to ``rejects``."""
    import pyarrow as pa

    if produced is None:
        return
    if isinstance(produced, (pa.RecordBatch, pa.Table, Reject)):
        produced = [produced]
    if not isinstance(produced, Iterable):
        raise TypeError(f"returned {type(produced).__name__}, not record batches")
    for item in produced:
        if isinstance(item, Reject):
            rejects.add(step, item)
        elif isinstance(item, pa.RecordBatch):
            yield item
        elif isinstance(item, pa.Table):
            yield from item.to_batches()
        else:
            raise TypeError(f"yielded {type(item).__name__}, not a pyarrow RecordBatch or Table")


def _spill(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
    """Stream ``batches`` into an Arrow IPC file at ``path`` (uncompressed, so writing it is a
    copy and reading it maps the file); the rows written."""
    import pyarrow as pa

    rows = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in batches:
            if batch.schema != schema:
                batch = _conform(batch, schema)
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def _frame(path: Path) -> pads.Dataset:
    """A spilled source or step as a lazy dataset."""
    import pyarrow.dataset as pads

    return pads.dataset(path, format="ipc")


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    import pyarrow as pa

    if batch.schema.names != schema.names:
        raise TypeError(
            f"a batch has columns {batch.schema.names}, the first had {schema.names}: every "
            "batch of a step must have the same columns"
        )
    return pa.RecordBatch.from_arrays(
        [column.cast(field.type) for column, field in zip(batch.columns, schema, strict=True)],
        schema=schema,
    )


class _Rejects:
    """Rows set aside by Python steps: (step, reason, the row as JSON), spilled to Parquet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self._writer: Any = None

    def add(self, step: str, reject: Reject) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from underlay.data.arrowio import json_default

        rows = reject.rows.to_pylist()
        if not rows:
            return
        table = pa.table(
            {
                "step": [step] * len(rows),
                "reason": [str(reject.reason)[:1000]] * len(rows),
                "row": [json.dumps(row, default=json_default, sort_keys=True) for row in rows],
            }
        )
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)
        self.rows += len(rows)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
