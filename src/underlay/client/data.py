"""SDK methods for the data domain: datasets of files (push, pull, versions, diff)."""

from __future__ import annotations

import hashlib
import mimetypes
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from underlay.data.manifest import FileEntry, check_path
from underlay.data.schemas import (
    DatasetRead,
    DiffRead,
    FileEntryModel,
    FilePage,
    MissingDigests,
    TableRead,
    TableVersionRead,
    VersionRead,
    WriteRead,
)
from underlay.errors import InvalidInput

if TYPE_CHECKING:
    import httpx

    from underlay.schemas import BlobRead

Progress = Callable[[int, int], None]
"""Called as work advances with (bytes done, bytes in all)."""

_HASH_CHUNK = 1024 * 1024


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

        Files are hashed here; only content the project does not hold yet is uploaded
        (``workers`` at a time); then the manifest is committed in one step. Symbolic links
        are not followed. Returns the new version, or the latest one (``created`` False) when
        nothing changed."""
        entries, paths = _scan(Path(folder))
        base = f"/projects/{project}/datasets/{name}"
        digests = sorted({e.digest for e in entries})
        answer: MissingDigests = self._one(
            MissingDigests, "POST", f"{base}/missing", json={"digests": digests}
        )
        wanted = set(answer.missing)
        uploads = {e.digest: e for e in entries if e.digest in wanted}
        total = sum(e.size for e in uploads.values())
        done = 0
        if progress:
            progress(0, total)

        def upload(entry: FileEntry) -> int:
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
            for size in pool.map(upload, uploads.values()):
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


def _scan(folder: Path) -> tuple[list[FileEntry], dict[str, Path]]:
    """Every regular file under ``folder`` (symbolic links skipped) as manifest entries."""
    if not folder.is_dir():
        raise InvalidInput(f"{folder} is not a folder")
    entries: list[FileEntry] = []
    paths: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        for filename in sorted(filenames):
            full = Path(dirpath) / filename
            if full.is_symlink() or not full.is_file():
                continue
            rel = check_path(full.relative_to(folder).as_posix())
            digest, size = _hash_file(full)
            media_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
            entries.append(FileEntry(rel, digest, size, media_type))
            paths[rel] = full
    return entries, paths


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
    ) -> WriteRead:
        """Write ``data`` as the next version of table ``name`` (created on first write).

        ``data`` is a file path (CSV, Parquet or JSON lines, by its suffix unless ``format``
        says), a pyarrow Table or RecordBatchReader, or a pandas DataFrame. ``mode`` is
        ``append``, ``overwrite`` or ``merge`` (an upsert by the ``key`` columns); ``evolve``
        lets the write add columns or change types. Rows of a file that cannot be read go to
        ``<name>_quarantine`` and are counted in the result.

        Personal data is masked on the way in: ``pii`` maps a column to ``redact``,
        ``partial``, ``tokenize`` or ``keep:<justification>``, and every other column found
        to hold PII is tokenised (the result's ``pii`` says what was found and done)."""
        params: dict[str, Any] = {"mode": mode, "evolve": evolve, "key": list(key)}
        if pii:
            params["pii"] = [f"{column}={policy}" for column, policy in pii.items()]
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
        return self._write_table(project, name, params, ipc_chunks(reader.schema, reader))

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
