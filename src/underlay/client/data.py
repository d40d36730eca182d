"""SDK methods for the data domain: datasets of files (push, pull, versions, diff)."""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from underlay.data.manifest import FileEntry, check_path
from underlay.data.schemas import (
    ChecksRead,
    DatasetRead,
    DiffRead,
    FileEntryModel,
    FilePage,
    MissingDigests,
    QualityRead,
    SubjectRead,
    TablePiecesRead,
    TableRead,
    TableVersionRead,
    VersionRead,
    WriteRead,
)
from underlay.errors import InvalidInput

if TYPE_CHECKING:
    import httpx

    from underlay.client.loader import TableLoader
    from underlay.schemas import BlobRead

Progress = Callable[[int, int], None]
"""Called as work advances with (bytes done, bytes in all)."""

_HASH_CHUNK = 1024 * 1024
SMALL_FILE = 1024 * 1024  # files under this go up in batches (see _batches)
BATCH_FILES = 128  # at most this many files in one batch upload (the server allows 256)
BATCH_BYTES = 16 * 1024 * 1024


class DataMethods:
    """Mixed into :class:`underlay.client.Client`."""

    if TYPE_CHECKING:
        _http: httpx.Client

        def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...
        def _one(self, model: type[Any], method: str, path: str, **kwargs: Any) -> Any: ...
        def _many(self, model: type[Any], path: str, **kwargs: Any) -> list[Any]: ...
        def upload_blob(
            self,
            project: str,
            data: Any,
            *,
            name: str = ...,
            media_type: str = ...,
            digest: str | None = ...,
        ) -> BlobRead: ...
        def upload_blobs(self, project: str, files: Any) -> list[BlobRead]: ...
        def iter_blob(self, project: str, digest: str) -> Iterator[bytes]: ...

    # -- datasets --------------------------------------------------------------------------

    def create_dataset(self, project: str, name: str, description: str = "") -> DatasetRead:
        body = {"name": name, "description": description}
        result: DatasetRead = self._one(
            DatasetRead, "POST", f"/projects/{project}/datasets", json=body
        )
        return result

    def list_datasets(self, project: str) -> list[DatasetRead]:
        return self._many(DatasetRead, f"/projects/{project}/datasets")

    def read_dataset(self, project: str, name: str) -> DatasetRead:
        result: DatasetRead = self._one(DatasetRead, "GET", f"/projects/{project}/datasets/{name}")
        return result

    def delete_dataset(self, project: str, name: str) -> None:
        self._request("DELETE", f"/projects/{project}/datasets/{name}")

    def dataset_versions(self, project: str, name: str) -> list[VersionRead]:
        return self._many(VersionRead, f"/projects/{project}/datasets/{name}/versions")

    def dataset_version(
        self, project: str, name: str, version: int | str = "latest"
    ) -> VersionRead:
        path = f"/projects/{project}/datasets/{name}/versions/{version}"
        result: VersionRead = self._one(VersionRead, "GET", path)
        return result

    def dataset_files(
        self, project: str, name: str, version: int | str = "latest", *, page: int = 1000
    ) -> Iterator[FileEntryModel]:
        """The version's files in path order, fetched a page at a time."""
        path = f"/projects/{project}/datasets/{name}/versions/{version}/files"
        after = ""
        while True:
            result: FilePage = self._one(
                FilePage, "GET", path, params={"limit": page, "after": after}
            )
            yield from result.files
            if result.next_after is None:
                return
            after = result.next_after

    def diff_dataset(
        self, project: str, name: str, from_version: int, to_version: int | None = None
    ) -> DiffRead:
        params: dict[str, int] = {"from": from_version}
        if to_version is not None:
            params["to"] = to_version
        path = f"/projects/{project}/datasets/{name}/diff"
        result: DiffRead = self._one(DiffRead, "GET", path, params=params)
        return result

    def push_dataset(
        self,
        project: str,
        name: str,
        folder: str | Path,
        *,
        message: str = "",
        progress: Progress | None = None,
        workers: int = 4,
    ) -> VersionRead:
        """Push every regular file under ``folder`` as the next version of ``name``.

        Files are hashed here (``workers`` at a time); only content the project does not hold
        yet is uploaded (``workers`` at a time, the largest first); then the manifest is
        committed in one step, so a failed upload leaves no version. Symbolic links are not
        followed. Returns the new version, or the latest one (``created`` False) when nothing
        changed."""
        entries, paths = _scan(Path(folder), max(1, workers))
        base = f"/projects/{project}/datasets/{name}"
        digests = sorted({e.digest for e in entries})
        answer: MissingDigests = self._one(
            MissingDigests, "POST", f"{base}/missing", json={"digests": digests}
        )
        wanted = set(answer.missing)
        uploads = {e.digest: e for e in entries if e.digest in wanted}
        # the largest first: a big file left for last would be uploaded alone at the end
        todo = sorted(uploads.values(), key=lambda e: e.size, reverse=True)
        total = sum(e.size for e in todo)
        done = 0
        if progress:
            progress(0, total)

        def upload(batch: list[FileEntry]) -> int:
            if len(batch) > 1:  # small files: one request, one transaction for them all
                self.upload_blobs(project, [(e.digest, paths[e.path]) for e in batch])
                return sum(e.size for e in batch)
            (entry,) = batch
            with paths[entry.path].open("rb") as handle:
                self.upload_blob(
                    project,
                    handle,
                    name=entry.path.rsplit("/", 1)[-1],
                    media_type=entry.media_type,
                    digest=entry.digest,
                )
            return entry.size

        with ThreadPoolExecutor(max(1, workers)) as pool:
            for size in pool.map(upload, _batches(todo)):
                done += size
                if progress:
                    progress(done, total)
        body = {
            "message": message,
            "files": [
                {"path": e.path, "digest": e.digest, "size": e.size, "media_type": e.media_type}
                for e in entries
            ],
        }
        result: VersionRead = self._one(VersionRead, "POST", f"{base}/versions", json=body)
        return result

    def pull_dataset(
        self,
        project: str,
        name: str,
        folder: str | Path,
        *,
        version: int | str = "latest",
        progress: Progress | None = None,
        workers: int = 4,
    ) -> VersionRead:
        """Write the files of a version under ``folder``, each verified against its digest.

        A file already there with the right content is left as it is; others are written to
        a temporary name and renamed, so an interrupted pull never leaves a half file under a
        dataset path. Paths are checked again here: none can land outside ``folder``."""
        info = self.dataset_version(project, name, version)
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        files = list(self.dataset_files(project, name, info.version))
        targets = [(f, _target(root, f.path)) for f in files]
        todo = [(f, t) for f, t in targets if not _holds(t, f.digest, f.size)]
        total = sum(f.size for f, _ in todo)
        done = 0
        if progress:
            progress(0, total)

        def fetch(item: tuple[FileEntryModel, Path]) -> int:
            entry, target = item
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            try:
                with tmp.open("wb") as out:
                    for chunk in self.iter_blob(project, entry.digest):
                        out.write(chunk)
                tmp.replace(target)
            finally:
                tmp.unlink(missing_ok=True)
            return entry.size

        with ThreadPoolExecutor(max(1, workers)) as pool:
            for size in pool.map(fetch, todo):
                done += size
                if progress:
                    progress(done, total)
        return info


def _batches(entries: list[FileEntry]) -> list[list[FileEntry]]:
    """Uploads for ``entries`` (largest first): each file of ``SMALL_FILE`` bytes or more
    alone, the smaller ones together, up to ``BATCH_FILES`` files and ``BATCH_BYTES`` bytes a
    request (per-request costs dominate small uploads: a dataset of many small files would
    otherwise spend most of its push on them)."""
    batches: list[list[FileEntry]] = []
    current: list[FileEntry] = []
    held = 0
    for entry in entries:
        if entry.size >= SMALL_FILE:
            batches.append([entry])
            continue
        if current and (len(current) >= BATCH_FILES or held + entry.size > BATCH_BYTES):
            batches.append(current)
            current, held = [], 0
        current.append(entry)
        held += entry.size
    if current:
        batches.append(current)
    return batches


def _scan(folder: Path, workers: int = 1) -> tuple[list[FileEntry], dict[str, Path]]:
    """Every regular file under ``folder`` (symbolic links skipped) as manifest entries, in
    path order; files are hashed ``workers`` at a time (hashlib releases the GIL)."""
    if not folder.is_dir():
        raise InvalidInput(f"{folder} is not a folder")
    paths: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        for filename in sorted(filenames):
            full = Path(dirpath) / filename
            if full.is_symlink() or not full.is_file():
                continue
            paths[check_path(full.relative_to(folder).as_posix())] = full
    with ThreadPoolExecutor(workers) as pool:
        hashed = list(pool.map(_hash_file, paths.values()))
    entries = [
        FileEntry(rel, digest, size, _media_type(full.name))
        for (rel, full), (digest, size) in zip(paths.items(), hashed, strict=True)
    ]
    return entries, paths


def _media_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _hash_file(path: Path) -> tuple[str, int]:
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return digest, handle.tell()


def _target(root: Path, path: str) -> Path:
    """Where a manifest path goes under ``root``; refuses any path that would leave it."""
    check_path(path)
    target = root.joinpath(*path.split("/"))
    resolved_root = root.resolve()
    if resolved_root not in target.resolve().parents:
        raise InvalidInput(f"file path {path!r} leads outside {root}")
    return target


def _holds(target: Path, digest: str, size: int) -> bool:
    """Whether ``target`` is a regular file with exactly this content already."""
    if target.is_symlink() or not target.is_file() or target.stat().st_size != size:
        return False
    return _hash_file(target)[0] == digest


class TableMethods:
    """Tables and SQL; mixed into :class:`underlay.client.Client`. pyarrow is imported only
    when these are used."""

    if TYPE_CHECKING:
        _http: httpx.Client

        def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...
        def _one(self, model: type[Any], method: str, path: str, **kwargs: Any) -> Any: ...
        def _many(self, model: type[Any], path: str, **kwargs: Any) -> list[Any]: ...

    def list_tables(self, project: str) -> list[TableRead]:
        return self._many(TableRead, f"/projects/{project}/tables")

    def table_info(self, project: str, name: str) -> TableRead:
        result: TableRead = self._one(TableRead, "GET", f"/projects/{project}/tables/{name}")
        return result

    def table_versions(self, project: str, name: str) -> list[TableVersionRead]:
        return self._many(TableVersionRead, f"/projects/{project}/tables/{name}/versions")

    def delete_table(self, project: str, name: str) -> None:
        self._request("DELETE", f"/projects/{project}/tables/{name}")

    def update_table(self, project: str, name: str, *, subject_key: str | None) -> TableRead:
        """Declare (or, with None, drop) the table's data-subject key column; every version
        is indexed by it."""
        body = {"subject_key": subject_key}
        result: TableRead = self._one(
            TableRead, "PATCH", f"/projects/{project}/tables/{name}", json=body
        )
        return result

    def find_subject(self, project: str, value: str) -> SubjectRead:
        """Every table (with a subject key) of the project, version and row that holds the
        subject whose key is ``value`` — the raw value, even where the key is tokenised."""
        result: SubjectRead = self._one(
            SubjectRead, "POST", f"/projects/{project}/subjects", json={"value": value}
        )
        return result

    def ingest_sql(
        self,
        project: str,
        name: str,
        url: str,
        *,
        table: str | None = None,
        query: str | None = None,
        watermark: str | None = None,
        mode: str = "append",
        key: list[str] | tuple[str, ...] = (),
        evolve: bool = False,
        pii: dict[str, str] | None = None,
        subject_key: str | None = None,
        batch_rows: int = 50_000,
    ) -> WriteRead:
        """Load ``table`` (or the rows of ``query``) of the database at ``url`` (any
        SQLAlchemy URL) into table ``name``; the database is read here, never by the server.

        With ``watermark`` (a column), the first load takes every row and the server keeps
        the highest watermark with the version; later loads of the same source take only
        rows above it (``mode`` append, or merge by ``key``). A load with no new rows writes
        no version and answers ``created`` False. The source is kept without its password."""
        from underlay.data.sqlsource import encode_value, open_sql, parse_url, source_key

        if watermark is not None and mode == "overwrite":
            raise InvalidInput(
                "an incremental load (--watermark) appends or merges, never overwrites"
            )
        source = source_key(parse_url(url), table, query)
        state = self._watermark(project, name, source, watermark) if watermark else None
        after = state[1] if state else None
        read = open_sql(
            url, table=table, query=query, watermark=watermark, after=after, batch_rows=batch_rows
        )
        if read is None:
            return self._unchanged(project, name, state[0] if state else None)
        params: dict[str, Any] = {
            "mode": mode,
            "evolve": evolve,
            "key": list(key),
            "format": "arrow",
            "source": source[:255],
        }
        if pii:
            params["pii"] = [f"{column}={policy}" for column, policy in pii.items()]
        if subject_key is not None:
            params["subject_key"] = subject_key
        if watermark is not None:
            kind, value = encode_value(read.highest)
            mark = {"source": source, "column": watermark, "type": kind, "value": value}
            params["watermark"] = json.dumps(mark)
        from underlay.data.arrowio import ipc_chunks

        return self._write_table(project, name, params, ipc_chunks(read.schema, read.batches))

    def _watermark(
        self, project: str, name: str, source: str, column: str
    ) -> tuple[TableVersionRead, Any] | None:
        """The latest version that a load of ``source`` by ``column`` recorded, and its
        watermark value; None before the first load."""
        from underlay.data.sqlsource import decode_value
        from underlay.errors import NotFound

        try:
            versions = self.table_versions(project, name)
        except NotFound:
            return None
        for version in versions:  # newest first
            mark = version.watermark
            if mark and mark["source"] == source and mark["column"] == column:
                return version, decode_value(mark["type"], mark["value"])
        return None

    def _unchanged(self, project: str, name: str, state: TableVersionRead | None) -> WriteRead:
        """The answer of a load that found no new rows: no version was written."""
        from underlay.errors import NotFound

        try:
            info = self.table_info(project, name)
            latest = self.table_versions(project, name)[0]
        except (NotFound, IndexError):
            return WriteRead(
                table=name,
                version=None,
                operation="none",
                rows_written=0,
                rows_quarantined=0,
                num_rows=0,
                created=False,
            )
        return WriteRead(
            table=name,
            version=info.version,
            operation="none",
            rows_written=0,
            rows_quarantined=0,
            num_rows=latest.num_rows,
            watermark=state.watermark if state else None,
            created=False,
        )

    def write_table(
        self,
        project: str,
        name: str,
        data: Any,
        *,
        mode: str = "append",
        key: list[str] | tuple[str, ...] = (),
        evolve: bool = False,
        format: str | None = None,
        pii: dict[str, str] | None = None,
        checks: Any = None,
        subject_key: str | None = None,
    ) -> WriteRead:
        """Write ``data`` as the next version of table ``name`` (created on first write).

        ``data`` is a file path (CSV, Parquet or JSON lines, by its suffix unless ``format``
        says), a folder of such files (all of one format; recursively, sorted by path, less
        hidden files and what its ``.underlayignore`` excludes: written as one version, or
        not at all when one file fails), a pyarrow Table or RecordBatchReader, or a pandas
        DataFrame. ``mode`` is ``append``, ``overwrite`` or ``merge`` (an upsert by the ``key``
        columns); ``evolve``
        lets the write add columns or change types. Rows of a file that cannot be read go to
        ``<name>_quarantine`` and are counted in the result.

        Personal data is masked on the way in: ``pii`` maps a column to ``redact``,
        ``partial``, ``tokenize`` or ``keep:<justification>``, and every other column found
        to hold PII is tokenised (the result's ``pii`` says what was found and done).

        ``subject_key`` names the data-subject key column of a new table (see
        :meth:`find_subject`); an existing table changes it with :meth:`update_table`.

        ``checks`` (a YAML or JSON file path, a list of checks, or a ``CheckSpec``) declares
        the table's quality checks first, as :meth:`set_table_checks` with ``create=True``:
        a new table is gated from its first version. Every write is checked against the
        table's checks: when a blocking one fails, the result's ``published`` is false, its
        ``quality`` says which checks failed and why, with sample rows, and readers stay on
        the previous version."""
        if checks is not None:
            self.set_table_checks(project, name, checks, create=True)
        params: dict[str, Any] = {"mode": mode, "evolve": evolve, "key": list(key)}
        if subject_key is not None:
            params["subject_key"] = subject_key
        if pii:
            params["pii"] = [f"{column}={policy}" for column, policy in pii.items()]
        if isinstance(data, (str, Path)) and Path(data).is_dir():
            from underlay.data.folders import frames, select_files

            root = Path(data)
            params["format"], files = select_files(root, format)
            params["folder"] = True
            params["source"] = (root.resolve().name or "folder")[:255]
            return self._write_table(project, name, params, frames(files))
        if isinstance(data, (str, Path)):
            path = Path(data)
            from underlay.data.ingest import detect_format

            params["format"] = format or detect_format(path.name)
            params["source"] = path.name[:255]
            with path.open("rb") as handle:
                content: Any = iter(lambda: handle.read(1 << 20), b"")
                return self._write_table(project, name, params, content)
        from underlay.data.arrowio import as_reader, ipc_chunks

        params["format"] = "arrow"
        reader = as_reader(data)
        chunks = (bytes(chunk) for chunk in ipc_chunks(reader.schema, reader))
        return self._write_table(project, name, params, chunks)

    def table_checks(self, project: str, name: str) -> ChecksRead:
        """The quality checks every new version of the table must pass."""
        result: ChecksRead = self._one(
            ChecksRead, "GET", f"/projects/{project}/tables/{name}/checks"
        )
        return result

    def set_table_checks(
        self, project: str, name: str, checks: Any, *, create: bool = False
    ) -> ChecksRead:
        """Declare the table's checks (replacing its own): ``checks`` is a YAML or JSON file
        path, a list of checks (dicts), ``{"checks": [...]}`` or a ``CheckSpec``. ``create``
        makes the table, empty, when it does not exist yet."""
        from underlay.data.quality import as_spec

        spec = as_spec(checks)
        result: ChecksRead = self._one(
            ChecksRead,
            "PUT",
            f"/projects/{project}/tables/{name}/checks",
            params={"create": create},
            json=spec.model_dump(mode="json", exclude_none=True),
        )
        return result

    def clear_table_checks(self, project: str, name: str) -> None:
        """Remove the table's checks."""
        self._request("DELETE", f"/projects/{project}/tables/{name}/checks")

    def check_table(
        self, project: str, name: str, *, version: int | None = None, checks: Any = None
    ) -> QualityRead:
        """Evaluate the table's checks (or ``checks``, as for :meth:`set_table_checks`) on a
        published version (the current one by default); nothing is written."""
        from underlay.data.quality import as_spec

        params = {} if version is None else {"version": version}
        body: dict[str, Any] = {}
        if checks is not None:
            body = {"checks": as_spec(checks).model_dump(mode="json", exclude_none=True)["checks"]}
        result: QualityRead = self._one(
            QualityRead,
            "POST",
            f"/projects/{project}/tables/{name}/check",
            params=params,
            json=body,
        )
        return result

    def _write_table(
        self, project: str, name: str, params: dict[str, Any], content: Any
    ) -> WriteRead:
        import httpx

        # the answer comes once the server has read the whole upload into the table, which
        # takes as long as the data does: no read timeout (the others stay)
        base: httpx.Timeout = self._http.timeout
        timeout = httpx.Timeout(connect=base.connect, read=None, write=base.write, pool=base.pool)
        result: WriteRead = self._one(
            WriteRead,
            "PUT",
            f"/projects/{project}/tables/{name}/data",
            params=params,
            content=content,
            headers={"Content-Type": "application/octet-stream"},
            timeout=timeout,
        )
        return result

    def read_table(
        self,
        project: str,
        name: str,
        *,
        version: int | None = None,
        columns: list[str] | None = None,
        limit: int | None = None,
    ) -> Any:
        """A version of the table (the published one by default) as a pyarrow Table."""
        import pyarrow as pa

        batches = list(
            self.iter_table(project, name, version=version, columns=columns, limit=limit)
        )
        return pa.Table.from_batches(batches[1:], schema=batches[0])

    def iter_table(
        self,
        project: str,
        name: str,
        *,
        version: int | None = None,
        columns: list[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[Any]:
        """The table's schema, then its record batches as they stream in."""
        params: dict[str, Any] = {"format": "arrow"}
        if version is not None:
            params["version"] = version
        if columns:
            params["columns"] = ",".join(columns)
        if limit is not None:
            params["limit"] = limit
        yield from self._arrow_stream(
            "GET", f"/projects/{project}/tables/{name}/data", params=params
        )

    def table_pieces(
        self, project: str, name: str, *, version: int | None = None
    ) -> TablePiecesRead:
        """The row groups of a version's files: what loaders shard and shuffle."""
        params = {"version": version} if version is not None else {}
        path = f"/projects/{project}/tables/{name}/pieces"
        result: TablePiecesRead = self._one(TablePiecesRead, "GET", path, params=params)
        return result

    def loader(
        self,
        project: str,
        table: str,
        *,
        version: int | None = None,
        batch_size: int = 1024,
        columns: list[str] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        shard: tuple[int, int] | None = None,
        prefetch: int = 2,
        drop_last: bool = False,
        shuffle_buffer: int = 65_536,
    ) -> TableLoader:
        """A loader of ``table`` (``"name@3"`` for version 3; the published version, pinned
        now, by default) for training: ``.batches()``, ``.numpy()`` or ``.torch()``.

        ``shuffle`` orders the row groups by ``seed`` and the epoch (:meth:`TableLoader.
        set_epoch`) and mixes rows within ``shuffle_buffer`` rows; ``shard=(rank, world)``
        reads every ``world``-th row group from ``rank``; ``prefetch`` batches are read ahead
        on a background thread (0: none); ``drop_last`` drops a short last batch."""
        from underlay.client.loader import TableLoader, parse_table

        name, number = parse_table(table, version)
        if batch_size < 1 or shuffle_buffer < 1 or prefetch < 0 or seed < 0:
            raise InvalidInput(
                "batch_size and shuffle_buffer must be at least 1, prefetch and seed at least 0"
            )
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise InvalidInput(f"shard {shard}: (rank, world) with 0 <= rank < world")
        found = self.table_pieces(project, name, version=number)
        return TableLoader(
            self,  # type: ignore[arg-type]
            project,
            name,
            version=found.version,
            rows=found.rows,
            batch_size=batch_size,
            columns=columns,
            shuffle=shuffle,
            seed=seed,
            shard=shard,
            prefetch=prefetch,
            drop_last=drop_last,
            shuffle_buffer=shuffle_buffer,
        )

    def read_ray(
        self,
        project: str,
        table: str,
        *,
        version: int | None = None,
        columns: list[str] | None = None,
        parallelism: int = -1,
    ) -> Any:
        """A ``ray.data.Dataset`` of ``table`` (``"name@3"`` for version 3; the published
        version, pinned now, by default), read by tasks across the Ray cluster this process
        is connected to, each streaming its pieces through the API with this client's token
        (see :mod:`underlay.client.ray_data`). Needs ``pip install 'underlay[ray]'``."""
        return _ray_data().read_dataset(
            self,
            project,
            table,
            version=version,
            columns=columns,
            parallelism=parallelism,
        )

    def write_ray(
        self,
        project: str,
        table: str,
        dataset: Any,
        *,
        mode: str = "append",
        key: list[str] | tuple[str, ...] = (),
        evolve: bool = False,
        pii: dict[str, str] | None = None,
        concurrency: int | None = None,
    ) -> WriteRead:
        """Write a ``ray.data.Dataset`` as ONE new version of ``table``: its write tasks
        upload their blocks as parts through the API, then the parts are committed together
        (``mode``, ``key``, ``evolve`` and ``pii`` as for :meth:`write_table`). All or
        nothing: when a task fails, no version is made and no part is left."""
        written: WriteRead = _ray_data().write_dataset(
            self,
            project,
            table,
            dataset,
            mode=mode,
            key=key,
            evolve=evolve,
            pii=pii,
            concurrency=concurrency,
        )
        return written

    def sql(self, project: str, query: str) -> Any:
        """Run one SELECT over the project's tables (``name@3`` for version 3): a pyarrow
        Table."""
        import pyarrow as pa

        batches = list(self.iter_sql(project, query))
        return pa.Table.from_batches(batches[1:], schema=batches[0])

    def iter_sql(self, project: str, query: str) -> Iterator[Any]:
        """The result's schema, then its record batches as they stream in."""
        body = {"query": query, "format": "arrow"}
        yield from self._arrow_stream("POST", f"/projects/{project}/sql", json=body)

    def _arrow_stream(self, method: str, path: str, **kwargs: Any) -> Iterator[Any]:
        import httpx
        import pyarrow as pa

        from underlay.client.client import _raise_for_problem
        from underlay.data.arrowio import ChunkFile
        from underlay.errors import IntegrityFailure, Unavailable

        try:
            with self._http.stream(method, path, **kwargs) as response:
                if not response.is_success:
                    response.read()
                    _raise_for_problem(response)
                reader = pa.ipc.open_stream(ChunkFile(response.iter_bytes()))
                yield reader.schema
                yield from reader
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach the server at {self._http.base_url}: {exc}") from exc
        except pa.ArrowInvalid as exc:
            raise IntegrityFailure(f"the result stream broke off: {exc}") from exc


def _ray_data() -> Any:
    try:
        from underlay.client import ray_data
    except ImportError as error:
        raise InvalidInput(
            f"Ray Data cannot be imported ({error}): pip install 'underlay[ray]'"
        ) from None
    return ray_data
