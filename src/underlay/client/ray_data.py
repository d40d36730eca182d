"""Tables as Ray Datasets: a pinned version read in parallel across a Ray cluster, and a Dataset
written as one new version, every byte through the API with the caller's token.

Why through the API and never around it (Ray Data has a Delta datasource and datasink of its
own): a table's project may be any tenant's, its files live under the server's home or its
object store with the server's credentials, and a write must pass the platform's PII masking,
quality gates and audit. So:

- **read** (:func:`read_dataset`): the version is pinned when the Dataset is made (the
  published one unless a version is named), from the list of its pieces (the row groups of its
  Parquet files, underlay.data.pieces). Read task ``k`` of ``n`` streams shard ``k/n`` of that
  version (the pieces ``k, k+n, …``) with the loader's ``GET …/pieces/raw`` and decodes them
  where it runs, as the loader does; by default ``n`` is the number of pieces, so each task
  fetches exactly one piece. A write that
  lands meanwhile changes nothing a task reads.
- **write** (:func:`write_dataset`): the driver starts a write in parts (underlay.data.parts);
  each write task uploads its blocks as one part (an Arrow IPC stream, numbered by the task);
  when every task has succeeded, the driver commits the parts as ONE new version. A task that
  fails fails the write: the driver drops the write, and the server removes every part staged
  for it, so no version is made and nothing is left.

The tasks connect as the client that made the Dataset did: its URL and token travel in the
tasks (as they do to a loader's worker processes), so use a token scoped to the project, as a
job's is. This module imports Ray at its top; the client imports it only when it is used.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import Block, BlockAccessor, BlockMetadata
from ray.data.datasource import Datasink
from ray.data.datasource.datasink import WriteResult

from underlay.data.pieces import MAX_NAMED
from underlay.data.schemas import PartRead, PartsStarted, TablePiecesRead, WriteRead
from underlay.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    import ray.data
    from ray.data._internal.execution.interfaces import TaskContext

    from underlay.client.client import Client

Connect = tuple[Any, ...]  # Client._connect: how a task connects as the caller did
BLOCK_BYTES = 64 << 20  # a read task yields a block each time it holds this much


def read_dataset(
    client: Client,
    project: str,
    table: str,
    *,
    version: int | None = None,
    columns: list[str] | None = None,
    parallelism: int = -1,
) -> ray.data.Dataset:
    """A Ray Dataset of ``table`` (``"name@3"`` for version 3; the published version, pinned
    now, by default); ``parallelism``: how many read tasks (at most one per piece; by default
    one per piece). ``Dataset.repartition`` spreads a table of few pieces wider."""
    import ray.data

    from underlay.client.loader import parse_table

    name, number = parse_table(table, version)
    found = client.table_pieces(project, name, version=number)
    source = TableDatasource(client._connect, project, found, columns)
    # by default one task per piece, each piece one block: left to itself, Ray would split
    # the blocks of a table of few pieces into ~200 (its default parallelism), and every
    # block then costs a task of its own in each later step (a write's part, for one)
    blocks = parallelism if parallelism > 0 else max(1, len(found.pieces))
    dataset: ray.data.Dataset = ray.data.read_datasource(source, override_num_blocks=blocks)
    return dataset


class TableDatasource(Datasource):
    """The pieces of one pinned table version, dealt to read tasks as shards."""

    def __init__(
        self, connect: Connect, project: str, found: TablePiecesRead, columns: list[str] | None
    ) -> None:
        self._connect = connect
        self._project = project
        self._found = found
        self._columns = columns

    def get_name(self) -> str:
        return f"UnderlayTable({self._found.table}@{self._found.version})"

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # the pieces' sizes are not listed; Ray then plans by the row counts

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        pieces = self._found.pieces
        tasks = max(1, min(len(pieces), parallelism)) if parallelism > 0 else max(1, len(pieces))
        path = f"/projects/{self._project}/tables/{self._found.table}/pieces/raw"
        base: dict[str, Any] = {"version": self._found.version}
        if self._columns:
            base["columns"] = ",".join(self._columns)
        out = []
        for k in range(tasks):  # consecutive pieces: the table's order, block after block
            mine = pieces[k * len(pieces) // tasks : (k + 1) * len(pieces) // tasks]
            named = [f"{p.file}:{p.row_group}" for p in mine]
            requests = [
                {**base, "pieces": ",".join(named[i : i + MAX_NAMED])}
                for i in range(0, len(named), MAX_NAMED)
            ] or [{**base, "shard": "0/1"}]  # a version of no piece: its schema, no row
            read = functools.partial(_read_pieces, self._connect, path, requests)
            rows = sum(p.rows for p in mine)
            meta = BlockMetadata(num_rows=rows, size_bytes=None, input_files=None, exec_stats=None)
            out.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return out


_CLIENTS: dict[tuple[int, Connect], Client] = {}


def _client(connect: Connect) -> Client:
    """A client connected as ``connect`` says, one per worker process and connection: making
    one costs tens of milliseconds (its TLS context), a task per piece would pay it each time,
    and its open connections are reused by the worker's next tasks."""
    from underlay.client.client import Client

    key = (os.getpid(), connect)
    found = _CLIENTS.get(key)
    if found is None:
        url, token, verify, timeout_s, retry_budget_s = connect
        found = Client(
            url, token, verify=verify, timeout_s=timeout_s, retry_budget_s=retry_budget_s
        )
        _CLIENTS[key] = found
    return found


def _read_pieces(connect: Connect, path: str, requests: list[dict[str, Any]]) -> Iterator[pa.Table]:
    """Read task: the rows of its pieces of the pinned version (``requests``: the query of
    each request, one after another), as blocks of about ``BLOCK_BYTES`` (one empty block,
    with the schema, when there is no row)."""
    from underlay.client.loader import _close, _pieces

    client = _client(connect)
    pending: list[pa.RecordBatch] = []
    held, sent, schema = 0, False, None
    for params in requests:
        stream = _pieces(client, path, params, ahead=True)
        try:
            schema = next(stream)
            for batch in stream:
                pending.append(batch)
                held += batch.nbytes
                if held >= BLOCK_BYTES:
                    yield pa.Table.from_batches(pending, schema)
                    pending, held, sent = [], 0, True
        finally:
            _close(stream)
    if pending or not sent:
        yield pa.Table.from_batches(pending, schema)


def write_dataset(
    client: Client,
    project: str,
    table: str,
    dataset: ray.data.Dataset,
    *,
    mode: str = "append",
    key: list[str] | tuple[str, ...] = (),
    evolve: bool = False,
    pii: dict[str, str] | None = None,
    concurrency: int | None = None,
) -> WriteRead:
    """Write ``dataset`` as ONE new version of ``table`` (created on first write): each write
    task uploads its blocks as a part, then the parts are committed together. All or nothing:
    when a task (or the commit) fails, the write is dropped and the error raised here."""
    if mode not in ("append", "overwrite", "merge"):
        raise InvalidInput(f"mode {mode!r} must be append, overwrite or merge")
    base = f"/projects/{project}/tables/{table}/parts"
    started: PartsStarted = client._one(PartsStarted, "POST", base)
    params: dict[str, Any] = {"mode": mode, "evolve": evolve, "key": list(key), "source": "ray"}
    if pii:
        params["pii"] = [f"{column}={policy}" for column, policy in pii.items()]
    sink = TableDatasink(client._connect, f"{base}/{started.write}", params)
    try:
        dataset.write_datasink(sink, concurrency=concurrency)
    except BaseException:
        _drop(client, f"{base}/{started.write}")
        raise
    assert sink.result is not None  # on_write_complete set it, or raised
    return sink.result


def _drop(client: Client, path: str) -> None:
    with contextlib.suppress(NotFound):  # a commit that failed has removed it already
        client._request("DELETE", path)


class TableDatasink(Datasink[tuple[int, int] | None]):
    """Each write task's blocks as one part of a write in parts; the commit on the driver."""

    def __init__(self, connect: Connect, path: str, params: dict[str, Any]) -> None:
        self._connect = connect
        self._path = path
        self._params = params
        self.result: WriteRead | None = None

    def get_name(self) -> str:
        return "UnderlayTable"

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> tuple[int, int] | None:
        """Upload this task's blocks as part ``ctx.task_idx``: (index, rows), or None when
        the task got no row."""
        from underlay.data.arrowio import ipc_chunks

        tables = (BlockAccessor.for_block(b).to_arrow() for b in blocks)
        tables = (t for t in tables if t.num_rows)
        first = next(tables, None)
        if first is None:
            return None
        schema = first.schema

        def batches() -> Iterator[pa.RecordBatch]:
            yield from first.to_batches()
            for more in tables:
                if not more.schema.equals(schema):
                    more = more.cast(schema)
                yield from more.to_batches()

        client = _client(self._connect)
        staged: PartRead = client._one(
            PartRead,
            "PUT",
            f"{self._path}/{ctx.task_idx}",
            content=(bytes(c) for c in ipc_chunks(schema, batches())),
            headers={"Content-Type": "application/octet-stream"},
            timeout=_no_read_timeout(client),
        )
        return staged.index, staged.rows

    def on_write_complete(self, write_result: WriteResult[tuple[int, int] | None]) -> None:
        """Commit the parts, in task order, as one version (on the driver)."""
        from underlay.client.client import Client

        indices = sorted(r[0] for r in write_result.write_returns if r is not None)
        if not indices:
            raise InvalidInput("the dataset holds no row: nothing was written")
        url, token, verify, timeout_s, retry_budget_s = self._connect
        with Client(
            url, token, verify=verify, timeout_s=timeout_s, retry_budget_s=retry_budget_s
        ) as client:  # the driver's: once, not kept
            self.result = client._one(
                WriteRead,
                "POST",
                f"{self._path}/commit",
                params=self._params,
                json={"parts": indices},
                timeout=_no_read_timeout(client),
            )


def _no_read_timeout(client: Client) -> Any:
    """The client's timeouts, less the read timeout: the answer comes once the server has
    read the whole upload, or written the whole version."""
    import httpx

    base: httpx.Timeout = client._http.timeout
    return httpx.Timeout(connect=base.connect, read=None, write=base.write, pool=base.pool)


def read_ray(
    project: str,
    table: str,
    version: int | None = None,
    *,
    columns: list[str] | None = None,
    parallelism: int = -1,
    **client_options: Any,
) -> ray.data.Dataset:
    """``underlay.read_ray("P", "table")``: :func:`read_dataset` with a client configured from
    the environment (``UNDERLAY_URL``, ``UNDERLAY_TOKEN``, profile), as inside a job."""
    from underlay.client import Client

    with Client.from_env(**client_options) as client:
        return read_dataset(
            client, project, table, version=version, columns=columns, parallelism=parallelism
        )


def write_ray(
    project: str,
    table: str,
    dataset: ray.data.Dataset,
    *,
    mode: str = "append",
    key: list[str] | tuple[str, ...] = (),
    evolve: bool = False,
    pii: dict[str, str] | None = None,
    **client_options: Any,
) -> WriteRead:
    """``underlay.write_ray("P", "table", dataset)``: :func:`write_dataset` with a client
    configured from the environment."""
    from underlay.client import Client

    with Client.from_env(**client_options) as client:
        return write_dataset(
            client, project, table, dataset, mode=mode, key=key, evolve=evolve, pii=pii
        )
