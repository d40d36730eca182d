"""Tables of a project (Delta Lake) and SQL over them (DuckDB), streamed as Arrow or JSON lines.

A write uploads a file (CSV, Parquet or JSON lines; or an Arrow IPC stream from the SDK) that
is staged to a temporary file, then read and written outside any database transaction (see
underlay.data.tables); rows that cannot be read go to the table ``<name>_quarantine`` with
their line number and the reason. Reads and SQL stream their results.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import anyio.from_thread
import pyarrow as pa
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import StringConstraints
from starlette.requests import ClientDisconnect

from underlay import identity
from underlay.api.deps import Ctx
from underlay.api.limits import BINARY_BODY, UploadSlots, body_chunks
from underlay.data import folders, ingest, parts, pieces, quality, staging
from underlay.data.arrowio import ipc_chunks, json_default
from underlay.data.privacy import PII_KEY_PURPOSE, IngestMasker, parse_policies
from underlay.data.quality import CheckSpec
from underlay.data.schemas import (
    CheckRun,
    ChecksRead,
    ChecksWrite,
    ColumnRead,
    QualityRead,
    SqlQuery,
    TablePiecesRead,
    TableRead,
    TableUpdate,
    TableVersionRead,
    WriteRead,
)
from underlay.data.sql import run as run_sql
from underlay.data.sqlsource import check_no_password, check_watermark
from underlay.data.tables import QUARANTINE_SUFFIX, TableStore
from underlay.errors import InvalidInput, UnderlayError
from underlay.identity import Action
from underlay.platform import audit_text

router = APIRouter(prefix="/projects/{project}", tags=["tables"])

ARROW = "application/vnd.apache.arrow.stream"
# List query parameters stay short, so a request head never nears the server's limit.
Short = Annotated[str, StringConstraints(max_length=63)]
Policy = Annotated[str, StringConstraints(max_length=200)]
JSONL = "application/x-ndjson"
PIECES = "application/vnd.underlay.pieces"
OutFormat = Literal["arrow", "jsonl"]
# The query parameters a loader's reads share (`…/data` with a seed or shard, `…/pieces/raw`).
ColumnsQ = Annotated[
    str | None, Query(max_length=1000, description="Column names, comma-separated.")
]
SeedQ = Annotated[
    int | None,
    Query(ge=0, le=2**63 - 1, description="Order the row groups by this seed (loaders)."),
]
EpochQ = Annotated[int, Query(ge=0, le=2**31 - 1, description="With seed.")]
ShardQ = Annotated[
    str | None,
    Query(max_length=24, description="INDEX/WORLD: every WORLD-th row group from INDEX."),
]


def _tables(request: Request) -> TableStore:
    store: TableStore = request.app.state.tables
    return store


Tables = Annotated[TableStore, Depends(_tables)]


def _resource(project: str, name: str) -> str:
    return f"project:{project}/table:{audit_text(name)}"


def _check_name(name: str) -> None:
    if not identity.NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"table name {audit_text(name)} must be 1-63 characters: a lowercase letter, then "
            "lowercase letters, digits, '-' or '_'"
        )


@router.get("/tables", response_model=list[TableRead])
def list_tables(project: str, ctx: Ctx, store: Tables) -> list[TableRead]:
    with ctx.unit("table.list", f"project:{project}/tables", audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return [table_read(store, t) for t in store.list_tables(u.session, found.id)]


@router.get("/tables/{name}", response_model=TableRead)
def read_table(project: str, name: str, ctx: Ctx, store: Tables) -> TableRead:
    with ctx.unit("table.read_meta", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return table_read(store, store.read(u.session, found.id, name), with_schema=True)


@router.get("/tables/{name}/versions", response_model=list[TableVersionRead])
def list_versions(project: str, name: str, ctx: Ctx, store: Tables) -> list[TableVersionRead]:
    with ctx.unit("table.read_meta", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        table = store.read(u.session, found.id, name)
        return [TableVersionRead.model_validate(v) for v in store.versions(u.session, table)]


@router.patch("/tables/{name}", response_model=TableRead)
def update_table(project: str, name: str, body: TableUpdate, ctx: Ctx, store: Tables) -> TableRead:
    """Declare or drop the table's data-subject key; every version is indexed by it."""
    with ctx.unit("table.update", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        table_id = store.read(u.session, found.id, name).id
    detail = {"subject_key": body.subject_key}
    try:  # outside a unit: indexing the versions may take a while (and its own session)
        store.set_subject_key(ctx.platform.db, found.id, table_id, body.subject_key)
    except UnderlayError as error:
        with ctx.unit("table.update", _resource(project, name), project=project) as u:
            u.detail = detail
            raise error from None  # audited as refused, with the reason
    with ctx.unit("table.update", _resource(project, name), project=project) as u:
        u.detail = detail
        return table_read(store, store.read(u.session, found.id, name), with_schema=True)


@router.delete("/tables/{name}", status_code=204)
def delete_table(project: str, name: str, ctx: Ctx, store: Tables) -> Response:
    with ctx.unit("table.delete", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        store.remove(u.session, store.read(u.session, found.id, name))
    return Response(status_code=204)


@router.put(
    "/tables/{name}/data",
    response_model=WriteRead,
    openapi_extra=BINARY_BODY,
)
async def write_table(
    project: str,
    name: str,
    request: Request,
    ctx: Ctx,
    store: Tables,
    format: Annotated[Literal["csv", "parquet", "jsonl", "arrow"], Query()],
    mode: Annotated[Literal["append", "overwrite", "merge"], Query()] = "append",
    key: Annotated[list[Short] | None, Query(max_length=8)] = None,
    evolve: bool = False,
    folder: Annotated[
        bool,
        Query(
            description="The body is a folder's files of ``format``, framed (see "
            "underlay.data.folders): all are written as one version, or none."
        ),
    ] = False,
    source: Annotated[str, Query(max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$")] = "",
    pii: Annotated[
        list[Policy] | None,
        Query(
            max_length=16,
            description="COLUMN=POLICY (redact, partial, tokenize, keep:why); other columns "
            "found to hold personal data are tokenised.",
        ),
    ] = None,
    subject_key: Annotated[
        Short | None, Query(description="The data-subject key column of a new table.")
    ] = None,
    watermark: Annotated[
        str | None,
        Query(
            max_length=2000,
            description="JSON {source, column, type, value}: where an incremental load got "
            "to, kept with the version.",
        ),
    ] = None,
) -> WriteRead:
    """Append, overwrite or merge (upsert by ``key`` columns) the uploaded file as the next
    version; rows that cannot be read are quarantined, the rest is written."""
    _check_name(name)
    chunks = functools.partial(body_chunks, request)
    check_no_password(source)
    spec = _Spec(
        format,
        mode,
        tuple(key or ()),
        evolve,
        source,
        parse_policies(pii or ()),
        subject_key,
        check_watermark(watermark) if watermark is not None else None,
        folder,
    )
    if folder and format == "arrow":
        raise InvalidInput("a folder upload holds csv, parquet or jsonl files, not arrow")

    def work() -> WriteRead:
        return _write(ctx, store, project, name, chunks(), spec)

    slots: UploadSlots = request.app.state.uploads
    async with slots.hold() as threads:
        return await anyio.to_thread.run_sync(work, limiter=threads)


@dataclass(frozen=True)
class _Spec:
    """What a write asks for."""

    fmt: ingest.Format | Literal["arrow"]
    mode: Any
    keys: tuple[str, ...]
    evolve: bool
    source: str
    policies: dict[str, str]
    subject_key: str | None = None
    watermark: str | None = None
    folder: bool = False
    parts: tuple[Path, ...] = ()  # a write in parts: its staged parts (underlay.data.parts)


def _write(
    ctx: Ctx, store: TableStore, project: str, name: str, body: Iterator[bytes], spec: _Spec
) -> WriteRead:
    # a table this write creates is leased to it until the write is over: if the server
    # dies meanwhile, the next start removes the table it left without a version
    with contextlib.ExitStack() as lease:
        with ctx.unit("table.write", _resource(project, name), audited=False) as u:
            found = identity.read_project(u.session, project, ctx.actor, Action.write)
            project_id = found.id
            table = store.ensure(
                u.session, project_id, name, ctx.actor.user_id or None, lease=lease
            )
            table_id, schema = table.id, store.schema(table)
            _claim_subject_key(table, spec.subject_key)
            key = ctx.platform.keyring.derived_key(u.session, project_id, PII_KEY_PURPOSE)
        try:
            result, quarantined, files = _stage_and_write(
                ctx, store, project_id, table_id, schema, body, spec, key
            )
        except (UnderlayError, ClientDisconnect) as error:
            if isinstance(error, ClientDisconnect):
                error = InvalidInput("the upload broke off before its end: nothing was written")
            if schema is None:  # the table was new: a refused first write leaves no empty table
                _forget_if_empty(ctx, store, project_id, table_id)
            with ctx.unit("table.write", _resource(project, name), project=project):
                raise error from None  # audited as refused, with the reason
        quarantine_version = None
        if quarantined is not None:
            quarantine_version = _quarantine(
                ctx, store, project_id, name, quarantined, spec.source, key
            )
        with ctx.unit("table.write", _resource(project, name), project=project) as u:
            identity.read_project(u.session, project, ctx.actor, Action.write)
            u.resource = f"{_resource(project, name)}@{result.version}"
            u.detail = {
                **({"files": files} if spec.folder else {}),
                **({"parts": files} if spec.parts else {}),
                "mode": spec.mode,
                "rows": result.rows_written,
                "quarantined": result.rows_quarantined,
                "published": result.published,
            }
        if not result.published:
            with ctx.unit("table.version.reject", u.resource, project=project) as u:
                u.detail = {"failed": (result.quality or {}).get("failed", [])}
        quarantine_table = None if quarantine_version is None else f"{name}{QUARANTINE_SUFFIX}"
        return WriteRead(
            table=name,
            version=result.version,
            operation=result.operation,
            rows_written=result.rows_written,
            rows_quarantined=result.rows_quarantined,
            num_rows=result.num_rows,
            quarantine_table=quarantine_table,
            quarantine_version=quarantine_version,
            pii=result.pii,
            published=result.published,
            quality=result.quality,
            watermark=json.loads(spec.watermark) if spec.watermark and result.published else None,
            files=files if spec.folder else None,
        )


def _claim_subject_key(table: Any, column: str | None) -> None:
    """A write may name the subject key of a table that has no data yet (checked against
    the data by the write); an existing table changes its key with an update."""
    if column is None or column == table.subject_key:
        return
    if table.published_version is not None:
        now = f"subject key {table.subject_key!r}" if table.subject_key else "no subject key"
        raise InvalidInput(
            f"table {table.name!r} has {now}, not {column!r}: "
            f"change it with `underlay tables update {table.name} --subject-key {column}`"
        )
    table.subject_key = column


def _stage_and_write(
    ctx: Ctx,
    store: TableStore,
    project_id: int,
    table_id: int,
    schema: pa.Schema | None,
    body: Iterator[bytes],
    spec: _Spec,
    key: bytes,
) -> tuple[Any, ingest.Quarantine | None, int]:
    """Stage the upload to a temporary file (a folder's files each to one), then read it
    into the table; returns the result, the rows set aside and the number of files."""
    home = ctx.platform.settings.home
    if spec.parts:
        result = _write_parts(ctx, store, project_id, table_id, list(spec.parts), spec, key)
        return result, None, len(spec.parts)
    if spec.folder:
        with staging.staged_folder(home) as where:
            files = _stage_folder(where, body, spec.fmt)
            result, quarantined = _write_files(
                ctx, store, project_id, table_id, schema, files, spec, key
            )
            return result, quarantined, len(files)
    with staging.staged(home, f".{spec.fmt}") as (out, staged):
        for chunk in body:
            out.write(chunk)
        out.flush()
        if spec.fmt == "arrow":
            result = _write_arrow(ctx, store, project_id, table_id, staged, spec, key)
            return result, None, 1
        result, quarantined = _write_files(
            ctx, store, project_id, table_id, schema, [(None, staged)], spec, key
        )
        return result, quarantined, 1


def _stage_folder(where: Path, body: Iterator[bytes], fmt: str) -> list[tuple[str | None, Path]]:
    """The files of a folder upload, each staged in ``where``: (path in the folder, file)."""
    files: list[tuple[str | None, Path]] = []
    for name, content in folders.read_frames(body):
        if folders.format_of(name) != fmt:
            raise InvalidInput(f"{audit_text(name)} is not a {fmt} file: a folder is of one format")
        path = where / f"{len(files):06d}.{fmt}"
        with path.open("wb") as out:
            for piece in content:
                out.write(piece)
        files.append((name, path))
    if not files:
        raise InvalidInput("the folder upload holds no file: nothing was written")
    return files


def _write_files(
    ctx: Ctx,
    store: TableStore,
    project_id: int,
    table_id: int,
    schema: pa.Schema | None,
    files: list[tuple[str | None, Path]],
    spec: _Spec,
    key: bytes,
) -> tuple[Any, ingest.Quarantine | None]:
    """Read staged files (of one format) into the table as one version: the first sets the
    schema of a new table (or of an evolving write), the others must match it."""
    fmt: ingest.Format = spec.fmt  # type: ignore[assignment]
    quarantine = ingest.Quarantine()

    def named(name: str | None, error: UnderlayError) -> UnderlayError:
        return InvalidInput(f"{audit_text(name)}: {error}") if name is not None else error

    first_name, first_path = files[0]
    quarantine.file = first_name
    try:
        first = ingest.open_source(
            first_path, fmt, None if spec.evolve else schema, store.batch_rows, quarantine
        )
    except InvalidInput as error:
        raise named(first_name, error) from None

    def batches() -> Iterator[pa.RecordBatch]:
        name = first_name
        try:
            yield from first.batches
            for name, path in files[1:]:
                quarantine.file = name
                data = ingest.open_source(path, fmt, first.schema, store.batch_rows, quarantine)
                yield from data.batches
        except InvalidInput as error:
            raise named(name, error) from None

    masker = IngestMasker(first.schema, spec.policies, key)
    result = store.write(
        ctx.platform.db,
        project_id,
        table_id,
        batches(),
        first.schema,
        mode=spec.mode,
        keys=spec.keys,
        evolve=spec.evolve,
        source=spec.source,
        quarantined=quarantine,
        created_by=ctx.actor.user_id or None,
        masker=masker,
        watermark=spec.watermark,
    )
    if quarantine.count:  # the raw lines get the write's PII decisions too
        quarantine.mask = masker.mask_raw
        return result, quarantine
    return result, None


def _forget_if_empty(ctx: Ctx, store: TableStore, project_id: int, table_id: int) -> None:
    """Remove a table that the refused write created (with any checks declared for it), unless
    it holds a version (a rejected one keeps its report)."""
    from underlay.data.models import DataTable

    with ctx.platform.db.session(ctx.actor.scope) as session:
        table = session.get(DataTable, table_id)
        empty = table is not None and table.published_version is None
        if empty and table is not None and not store.versions(session, table):
            store.remove(session, table)


def _write_arrow(
    ctx: Ctx,
    store: TableStore,
    project_id: int,
    table_id: int,
    path: Path,
    spec: _Spec,
    key: bytes,
) -> Any:
    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    except (pa.ArrowException, OSError) as error:
        raise InvalidInput(f"the body is no Arrow IPC stream: {error}") from None
    return store.write(
        ctx.platform.db,
        project_id,
        table_id,
        reader,
        reader.schema,
        mode=spec.mode,
        keys=spec.keys,
        evolve=spec.evolve,
        source=spec.source or "arrow",
        created_by=ctx.actor.user_id or None,
        masker=IngestMasker(reader.schema, spec.policies, key),
        watermark=spec.watermark,
    )


def _write_parts(
    ctx: Ctx,
    store: TableStore,
    project_id: int,
    table_id: int,
    files: list[Path],
    spec: _Spec,
    key: bytes,
) -> Any:
    """The staged parts of a write in parts (Arrow IPC streams), in order, as one version."""
    schema, batches = parts.open_parts(files)
    return store.write(
        ctx.platform.db,
        project_id,
        table_id,
        batches,
        schema,
        mode=spec.mode,
        keys=spec.keys,
        evolve=spec.evolve,
        source=spec.source or "parts",
        created_by=ctx.actor.user_id or None,
        masker=IngestMasker(schema, spec.policies, key),
    )


def _quarantine(
    ctx: Ctx,
    store: TableStore,
    project_id: int,
    name: str,
    quarantine: ingest.Quarantine,
    source: str,
    key: bytes,
) -> int:
    """Append the rows set aside to ``<name>_quarantine``; returns its new version."""
    target = f"{name}{QUARANTINE_SUFFIX}"[:63]
    with contextlib.ExitStack() as lease:
        with ctx.platform.db.session(ctx.actor.scope) as session:
            user = ctx.actor.user_id or None
            table_id = store.ensure(session, project_id, target, user, lease=lease).id
        rows = quarantine.table(source, quarantine.mask)
        return store.write(
            ctx.platform.db,
            project_id,
            table_id,
            rows.to_batches(),
            rows.schema,
            source=source,
            created_by=ctx.actor.user_id or None,
            masker=IngestMasker(rows.schema, {}, key),  # the raw lines hold PII too
        ).version


@router.get("/tables/{name}/pieces", response_model=TablePiecesRead)
def list_pieces(
    project: str,
    name: str,
    ctx: Ctx,
    store: Tables,
    version: Annotated[int | None, Query(ge=0)] = None,
) -> TablePiecesRead:
    """The row groups of a version's files: the units a loader shards and shuffles."""
    with ctx.unit("table.read_meta", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        table = store.read(u.session, found.id, name)
        number = store.published(u.session, table, version)
        dataset = store.published_dataset(table, number)
    return pieces.describe(name, number, dataset)


@router.get("/tables/{name}/pieces/raw", response_class=StreamingResponse)
def read_pieces(
    project: str,
    name: str,
    ctx: Ctx,
    store: Tables,
    version: Annotated[int | None, Query(ge=0)] = None,
    columns: ColumnsQ = None,
    seed: SeedQ = None,
    epoch: EpochQ = 0,
    shard: ShardQ = None,
    named: Annotated[
        str | None,
        Query(
            alias="pieces",
            max_length=5000,
            description="FILE:GROUP,…: these pieces, in this order, instead of a shard.",
        ),
    ] = None,
) -> StreamingResponse:
    """The row groups one shard of a loader reads in one epoch (or the pieces named), as the
    bytes of their Parquet column chunks, for the reader to decode (frames: see
    ``underlay.data.pieces``)."""
    part = pieces.Shard.parse(shard) if shard is not None else None
    chosen = pieces.parse_named(named) if named is not None else None
    if chosen is not None and (part is not None or seed is not None):
        raise InvalidInput("name pieces, or a shard and seed, not both")
    with ctx.unit("table.read", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        table = store.read(u.session, found.id, name)
        number = store.published(u.session, table, version)
        u.resource = f"{_resource(project, name)}@{number}"
        dataset = store.published_dataset(table, number)
    wanted = [c for c in columns.split(",") if c] if columns else None
    frames = pieces.raw(dataset, store.location(table), wanted, seed, epoch, part, chosen)
    return StreamingResponse(frames, media_type=PIECES)


@router.get("/tables/{name}/data", response_class=StreamingResponse)
def read_rows(
    project: str,
    name: str,
    ctx: Ctx,
    store: Tables,
    version: Annotated[int | None, Query(ge=0)] = None,
    format: OutFormat = "arrow",
    limit: Annotated[int | None, Query(ge=1)] = None,
    columns: ColumnsQ = None,
    seed: SeedQ = None,
    epoch: EpochQ = 0,
    shard: ShardQ = None,
    batch_rows: Annotated[int, Query(ge=1, le=1 << 20)] = 8192,
) -> StreamingResponse:
    """Stream a version of the table (the published one by default); with ``seed`` or
    ``shard``, the row groups one shard of a loader reads in one epoch (see ``…/pieces``)."""
    part = pieces.Shard.parse(shard) if shard is not None else None
    with ctx.unit("table.read", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        table = store.read(u.session, found.id, name)
        number = store.published(u.session, table, version)
        u.resource = f"{_resource(project, name)}@{number}"
        dataset = store.published_dataset(table, number)
    wanted = [c for c in columns.split(",") if c] if columns else None
    schema, batches = pieces.read(dataset, wanted, batch_rows, seed, epoch, part)
    if limit is not None:
        batches = _head(batches, limit)
    return _stream(schema, batches, format)


@router.post("/sql", response_class=StreamingResponse)
def sql(project: str, body: SqlQuery, ctx: Ctx, store: Tables) -> StreamingResponse:
    """Run one SELECT over the project's tables (``name@3`` for version 3); stream the rows."""
    with ctx.unit("table.sql", f"project:{project}/sql", project=project) as u:
        u.detail = {"query": body.query[:2000]}
        found = identity.read_project(u.session, project, ctx.actor)

        def resolve(table_name: str, version: int | None) -> Any:
            table = store.read(u.session, found.id, table_name)
            return store.published_dataset(table, store.published(u.session, table, version))

        result = run_sql(body.query, resolve, ctx.platform.settings.data)
        u.detail["tables"] = result.tables
    return _stream(result.schema, result.batches, body.format)


def _head(batches: Iterator[pa.RecordBatch], limit: int) -> Iterator[pa.RecordBatch]:
    left = limit
    for batch in batches:
        if left <= 0:
            return
        yield batch.slice(0, left)
        left -= batch.num_rows


def _stream(schema: pa.Schema, batches: Iterator[pa.RecordBatch], fmt: str) -> StreamingResponse:
    if fmt == "jsonl":
        return StreamingResponse(_jsonl(batches), media_type=JSONL)
    return StreamingResponse(_arrow(schema, batches), media_type=ARROW)


def _jsonl(batches: Iterator[pa.RecordBatch]) -> Iterator[bytes]:
    for batch in batches:
        yield "".join(
            json.dumps(row, default=json_default) + "\n" for row in batch.to_pylist()
        ).encode()


def _arrow(schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> Iterator[bytes | memoryview]:
    return ipc_chunks(schema, batches)


def table_read(store: TableStore, table: Any, *, with_schema: bool = False) -> TableRead:
    columns = None
    if with_schema and table.published_version is not None:
        schema = store.schema(table)
        columns = [ColumnRead(name=f.name, type=str(f.type)) for f in schema or []]
    return TableRead(
        name=table.name,
        description=table.description,
        version=table.published_version,
        created_at=table.created_at,
        columns=columns,
        subject_key=table.subject_key,
    )


# -- quality checks --------------------------------------------------------------------------


@router.get("/tables/{name}/checks", response_model=ChecksRead)
def read_checks(project: str, name: str, ctx: Ctx, store: Tables) -> ChecksRead:
    """The quality checks every new version of the table must pass."""
    with ctx.unit("table.read_meta", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        table = store.read(u.session, found.id, name)
        spec = quality.load(table.checks)
        return ChecksRead(table=name, checks=spec.checks if spec else [])


@router.put("/tables/{name}/checks", response_model=ChecksRead)
def set_checks(
    project: str,
    name: str,
    body: ChecksWrite,
    ctx: Ctx,
    store: Tables,
    create: Annotated[
        bool,
        Query(
            description="Create the table, empty, if it does not exist: its first write is "
            "then checked, and the columns the checks name are checked against that write's data."
        ),
    ] = False,
) -> ChecksRead:
    """Declare the table's checks (they replace its current ones); refused, and nothing
    stored, when a check names a column the table lacks, or holds a bad regex or SQL."""
    _check_name(name)
    with ctx.unit("table.checks.set", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        if create:
            table = store.ensure(u.session, found.id, name, ctx.actor.user_id or None)
        else:
            table = store.read(u.session, found.id, name)
        spec = CheckSpec(checks=body.checks)
        u.detail = {"checks": [c.label() for c in spec.checks]}
        store.set_checks(u.session, table, spec)
        return ChecksRead(table=name, checks=spec.checks)


@router.delete("/tables/{name}/checks", status_code=204)
def delete_checks(project: str, name: str, ctx: Ctx, store: Tables) -> Response:
    """Remove the table's checks: new versions are published unchecked."""
    with ctx.unit("table.checks.clear", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        store.read(u.session, found.id, name).checks = None
    return Response(status_code=204)


@router.post("/tables/{name}/check", response_model=QualityRead)
def run_checks(
    project: str,
    name: str,
    ctx: Ctx,
    store: Tables,
    body: CheckRun | None = None,
    version: Annotated[int | None, Query(ge=0)] = None,
) -> QualityRead:
    """Evaluate the table's checks (or those given) on a published version; writes nothing.
    Audited as a read: the report holds sampled rows."""
    with ctx.unit("table.check", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        table = store.read(u.session, found.id, name)
        number = store.published(u.session, table, version)
        u.resource = f"{_resource(project, name)}@{number}"
        given = CheckSpec(checks=body.checks) if body and body.checks is not None else None
        report = store.check(table, number, given)
        u.detail = {"passed": report.passed}
        return QualityRead(table=name, version=number, report=report.to_dict())
