"""Datasets of files: immutable, numbered versions whose files are the project's blobs.

A push is three steps, so that no byte is sent twice and no version is half-written:

1. the client hashes its files and asks which digests the project lacks (:func:`missing`);
2. it uploads those as blobs (the kernel's encrypted, content-addressed store);
3. it commits the manifest (:func:`commit_version`): every path checked, every digest and size
   checked against a blob of the project, then the version and its file rows are added in one
   transaction. A manifest equal to the latest version's makes no new version.

Versions never change once committed; the next number is taken under a lock on the dataset
row, so two concurrent pushes get two versions, never the same number. Paths are relative POSIX
paths without ``.`` or ``..`` segments, checked on commit and again by every reader that
writes files (the SDK's pull), so a manifest can never name a place outside its folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Select, delete, exc, func, insert, select
from sqlalchemy.orm import Session

from underlay.blobs import check_digest
from underlay.data.manifest import FileEntry, check_path, manifest_digest
from underlay.data.models import Dataset, DatasetFile, DatasetVersion
from underlay.errors import Conflict, InvalidInput, NotFound
from underlay.store.models import Blob

MAX_FILES = 1_000_000


@dataclass(frozen=True)
class Diff:
    added: list[DatasetFile]
    removed: list[DatasetFile]
    changed: list[tuple[DatasetFile, DatasetFile]]  # (before, after)


# -- datasets --------------------------------------------------------------------------------


def create(
    session: Session,
    project_id: int,
    name: str,
    description: str = "",
    created_by: int | None = None,
) -> Dataset:
    """A new, empty dataset; :class:`Conflict` if the project has one of that name."""
    dataset = Dataset(
        project_id=project_id, name=name, description=description, created_by=created_by
    )
    try:
        with session.begin_nested():  # a concurrent create of the same name loses here
            session.add(dataset)
    except exc.IntegrityError:
        raise Conflict(f"dataset {name!r} already exists in this project") from None
    return dataset


def get(session: Session, project_id: int, name: str, *, lock: bool = False) -> Dataset:
    query = _by_name(project_id, name)
    found = session.scalar(query.with_for_update() if lock else query)
    if found is None:
        raise NotFound(f"dataset {name[:80]!r} not found")
    return found


def get_or_create(
    session: Session, project_id: int, name: str, created_by: int | None = None
) -> Dataset:
    """The dataset, created on first push; locked until the caller's transaction ends, so
    concurrent pushes to it take their version numbers one after the other."""
    query = _by_name(project_id, name).with_for_update()
    found = session.scalar(query)
    if found is not None:
        return found
    try:
        return create(session, project_id, name, "", created_by)
    except Conflict:  # another push created it meanwhile (and has committed): lock that one
        return get(session, project_id, name, lock=True)


def list_all(session: Session, project_id: int) -> list[tuple[Dataset, DatasetVersion | None]]:
    """Every dataset of the project with its latest version (None before the first push)."""
    datasets = list(
        session.scalars(
            select(Dataset).where(Dataset.project_id == project_id).order_by(Dataset.name)
        )
    )
    latest = {v.dataset_id: v for v in _latest_versions(session, [d.id for d in datasets])}
    return [(d, latest.get(d.id)) for d in datasets]


def remove(session: Session, project_id: int, name: str) -> None:
    """Delete a dataset and its versions; the blobs stay (other versions or datasets may
    hold them; ``blobs rm`` removes one that nothing holds)."""
    dataset = get(session, project_id, name, lock=True)
    version_ids = select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset.id)
    session.execute(delete(DatasetFile).where(DatasetFile.version_id.in_(version_ids)))
    session.execute(delete(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id))
    session.delete(dataset)
    session.flush()


def purge_project(session: Session, project_id: int) -> None:
    """Remove every dataset row of a project (before the project row and its blobs go)."""
    session.execute(delete(DatasetFile).where(DatasetFile.project_id == project_id))
    session.execute(delete(DatasetVersion).where(DatasetVersion.project_id == project_id))
    session.execute(delete(Dataset).where(Dataset.project_id == project_id))


# -- versions --------------------------------------------------------------------------------


def missing(session: Session, project_id: int, digests: Sequence[str]) -> list[str]:
    """The digests among ``digests`` that the project holds no blob for (in the given order)."""
    wanted = list(dict.fromkeys(check_digest(d) for d in digests))
    have: set[str] = set()
    for start in range(0, len(wanted), 500):
        part = wanted[start : start + 500]
        have.update(
            session.scalars(
                select(Blob.digest).where(Blob.project_id == project_id, Blob.digest.in_(part))
            )
        )
    return [d for d in wanted if d not in have]


def commit_version(
    session: Session,
    project_id: int,
    name: str,
    files: Sequence[FileEntry],
    *,
    message: str = "",
    created_by: int | None = None,
) -> tuple[DatasetVersion, bool]:
    """Add the next version of ``name`` (created if new) holding ``files``; returns it and
    whether it is new (False: the manifest equals the latest version's, nothing was added)."""
    if len(files) > MAX_FILES:
        raise InvalidInput(f"a version holds at most {MAX_FILES} files, got {len(files)}")
    seen: set[str] = set()
    for entry in files:
        check_path(entry.path)
        check_digest(entry.digest)
        if entry.path in seen:
            raise InvalidInput(f"file path {entry.path[:100]!r} appears twice in the manifest")
        seen.add(entry.path)
    _check_blobs(session, project_id, files)
    dataset = get_or_create(session, project_id, name, created_by)
    digest = manifest_digest(files)
    latest = _latest(session, dataset.id)
    if latest is not None and latest.manifest_digest == digest:
        return latest, False
    version = DatasetVersion(
        project_id=project_id,
        dataset_id=dataset.id,
        version=(latest.version if latest else 0) + 1,
        message=message,
        file_count=len(files),
        total_size=sum(f.size for f in files),
        manifest_digest=digest,
        created_by=created_by,
    )
    session.add(version)
    session.flush()  # the scope check of the flush covers the file rows: same project id
    rows = [
        {
            "project_id": project_id,
            "version_id": version.id,
            "path": f.path,
            "digest": f.digest,
            "size": f.size,
            "media_type": f.media_type,
        }
        for f in files
    ]
    for start in range(0, len(rows), 5000):
        session.execute(insert(DatasetFile), rows[start : start + 5000])
    return version, True


def get_version(
    session: Session, project_id: int, name: str, version: int | None
) -> DatasetVersion:
    """Version ``version`` of dataset ``name`` (the latest when None)."""
    dataset = get(session, project_id, name)
    if version is None:
        found = _latest(session, dataset.id)
        if found is None:
            raise NotFound(f"dataset {name!r} has no version yet")
        return found
    row = session.scalar(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset.id, DatasetVersion.version == version
        )
    )
    if row is None:
        raise NotFound(f"dataset {name!r} has no version {version}")
    return row


def list_versions(session: Session, project_id: int, name: str) -> list[DatasetVersion]:
    dataset = get(session, project_id, name)
    query = (
        select(DatasetVersion)
        .where(DatasetVersion.dataset_id == dataset.id)
        .order_by(DatasetVersion.version.desc())
    )
    return list(session.scalars(query))


def list_files(
    session: Session, version: DatasetVersion, *, limit: int | None = None, after: str = ""
) -> list[DatasetFile]:
    """The version's files in path order, ``limit`` at a time after path ``after`` (a cursor:
    stable however large the version)."""
    query = (
        select(DatasetFile)
        .where(DatasetFile.version_id == version.id, DatasetFile.path > after)
        .order_by(DatasetFile.path)
    )
    return list(session.scalars(query.limit(limit) if limit else query))


def diff(session: Session, before: DatasetVersion, after: DatasetVersion) -> Diff:
    """What changed from ``before`` to ``after``: files added, removed, and changed."""
    old = {f.path: f for f in list_files(session, before)}
    new = {f.path: f for f in list_files(session, after)}
    return Diff(
        added=[new[p] for p in sorted(new.keys() - old.keys())],
        removed=[old[p] for p in sorted(old.keys() - new.keys())],
        changed=[
            (old[p], new[p])
            for p in sorted(old.keys() & new.keys())
            if old[p].digest != new[p].digest
        ],
    )


# -- helpers ---------------------------------------------------------------------------------


def _by_name(project_id: int, name: str) -> Select[Dataset]:
    return select(Dataset).where(Dataset.project_id == project_id, Dataset.name == name)


def _latest(session: Session, dataset_id: int) -> DatasetVersion | None:
    return session.scalar(
        select(DatasetVersion)
        .where(DatasetVersion.dataset_id == dataset_id)
        .order_by(DatasetVersion.version.desc())
        .limit(1)
    )


def _latest_versions(session: Session, dataset_ids: list[int]) -> list[DatasetVersion]:
    if not dataset_ids:
        return []
    newest = (
        select(DatasetVersion.dataset_id, func.max(DatasetVersion.version).label("v"))
        .where(DatasetVersion.dataset_id.in_(dataset_ids))
        .group_by(DatasetVersion.dataset_id)
        .subquery()
    )
    query = select(DatasetVersion).join(
        newest,
        (DatasetVersion.dataset_id == newest.c.dataset_id) & (DatasetVersion.version == newest.c.v),
    )
    return list(session.scalars(query))


def _check_blobs(session: Session, project_id: int, files: Sequence[FileEntry]) -> None:
    """Every file names a blob of the project, with the blob's size."""
    digests = list({f.digest for f in files})
    sizes: dict[str, int] = {}
    for start in range(0, len(digests), 500):
        part = digests[start : start + 500]
        rows = session.execute(
            select(Blob.digest, Blob.size).where(
                Blob.project_id == project_id, Blob.digest.in_(part)
            )
        )
        sizes.update({digest: size for digest, size in rows})
    absent = [f for f in files if f.digest not in sizes]
    if absent:
        raise InvalidInput(
            f"{len(absent)} file(s) name no blob of this project (first: {absent[0].path!r}, "
            f"sha256:{absent[0].digest}): upload them before committing the version"
        )
    wrong = [f for f in files if sizes[f.digest] != f.size]
    if wrong:
        raise InvalidInput(
            f"file {wrong[0].path!r} says {wrong[0].size} bytes but its blob holds "
            f"{sizes[wrong[0].digest]}"
        )
