"""An ETL pipeline run with Ray Data (``engine="ray"``): each source is read as a Ray Dataset of
its pinned version (``Client.read_ray``: one read task per piece, through the API with the
runner's token), each Python step is a ``map_batches`` over the blocks of its input, spread
over the Ray cluster this process is connected to as a driver, and the result is written with
``Client.write_ray`` as ONE new version of the output table (the tasks stage their blocks as
parts, one commit; a failed task writes nothing).

What a step sees differs from a local run in one way: its function is called once per block
(a piece of the table, or a block of the step before), with that block's record batches, not
once with every batch of the input; a step that keeps state across batches (a running total,
a dedup set) sees only its block. Steps that take each batch on its own, the usual ETL map,
give the same rows either way (see the test that runs one pipeline both ways).

Not here, yet: SQL steps (DuckDB runs on one machine: run those without Ray) and
:class:`~underlay.data.pipelines.Reject` (a step that yields one fails the run, saying so).
Each step but the last is materialised in Ray's object store (which spills to disk), so that
its row count is known for the run's report.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from underlay.data.pipelines import Pipeline, Reject, Transform, resolve_function
from underlay.errors import InvalidInput

if TYPE_CHECKING:
    import pyarrow as pa

    from underlay.client import Client


def check(spec: Pipeline) -> None:
    """Refuse, before any run starts, a pipeline that cannot run with Ray Data."""
    for step in spec.transforms:
        if step.sql is not None:
            raise InvalidInput(
                f"step {step.name!r} is SQL, which runs on one machine: run pipeline "
                f"{spec.name!r} without engine='ray'"
            )


def execute(
    client: Client,
    project: str,
    spec: Pipeline,
    pinned: dict[str, tuple[str, int]],
    steps: list[dict[str, Any]],
) -> Any:
    """Run ``spec`` on Ray; ``steps`` gets each step's report. Returns the write's result."""
    datasets: dict[str, Any] = {
        alias: client.read_ray(project, table, version=version)
        for alias, (table, version) in pinned.items()
    }
    last = len(spec.transforms) - 1
    for index, step in enumerate(spec.transforms):
        function = _shippable(resolve_function(step, spec.folder), spec.folder)
        mapped = datasets[spec.input_of(index)].map_batches(
            _Apply(function, step.name), batch_format="pyarrow", batch_size=None
        )
        datasets[step.name] = mapped if index == last else mapped.materialize()
        if index != last:
            steps.append({"name": step.name, "kind": "python", "rows_out": mapped.count()})
    written = client.write_ray(
        project,
        spec.output.table,
        datasets[spec.result_name()],
        mode=spec.output.mode,
        key=spec.output.keys,
    )
    if spec.transforms:
        steps.append(
            {"name": spec.transforms[-1].name, "kind": "python", "rows_out": written.rows_written}
        )
    return written


def _shippable(function: Transform, folder: Path) -> Transform:
    """``function``, its module pickled by value when it comes from the pipeline's folder
    (Ray's workers cannot import it by name: the folder is not on their path)."""
    module = sys.modules.get(getattr(function, "__module__", "") or "")
    where = getattr(module, "__file__", None)
    if module is not None and where and Path(where).resolve().is_relative_to(folder.resolve()):
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(module)  # type: ignore[no-untyped-call]
    return function


class _Apply:
    """A Python step over one block: its batches in, one table of what the step yields out."""

    def __init__(self, function: Transform, name: str) -> None:
        self._function = function
        self._name = name

    def __call__(self, block: pa.Table) -> pa.Table:
        import pyarrow as pa

        out: list[pa.Table] = []
        for item in _items(self._function(iter(block.to_batches()))):
            if isinstance(item, Reject):
                raise InvalidInput(
                    f"step {self._name!r} set rows aside (Reject), which a run with "
                    "engine='ray' cannot keep yet: run it without Ray"
                )
            if isinstance(item, pa.RecordBatch):
                item = pa.Table.from_batches([item])
            if not isinstance(item, pa.Table):
                raise TypeError(
                    f"yielded {type(item).__name__}, not a pyarrow RecordBatch or Table"
                )
            out.append(item)
        if not out:
            return block.slice(0, 0)  # no row: an empty block, skipped by the write
        return pa.concat_tables(out, promote_options="default")


def _items(produced: Any) -> Iterator[Any]:
    import pyarrow as pa

    if produced is None:
        return
    if isinstance(produced, (pa.RecordBatch, pa.Table, Reject)):
        yield produced
        return
    yield from produced
