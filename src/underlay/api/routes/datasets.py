"""Datasets of a project: versions of files, pushed in three steps (see underlay.data.datasets).

A version is named by its number or ``latest``. Another project's datasets answer exactly as
missing ones do (the project lookup refuses first).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from underlay import identity
from underlay.api.deps import Ctx
from underlay.data import datasets
from underlay.data.manifest import FileEntry
from underlay.data.models import Dataset, DatasetVersion
from underlay.data.schemas import (
    DatasetCreate,
    DatasetRead,
    DiffRead,
    DigestList,
    FileChange,
    FileEntryModel,
    FilePage,
    MissingDigests,
    VersionCreate,
    VersionRead,
)
from underlay.errors import InvalidInput
from underlay.identity import Action
from underlay.platform import audit_text

router = APIRouter(prefix="/projects/{project}/datasets", tags=["datasets"])

DatasetName = Annotated[str, Path(max_length=63)]
VersionRef = Annotated[str, Path(pattern=r"^(latest|[1-9][0-9]{0,8})$")]


def _resource(project: str, name: str, version: object = None) -> str:
    tail = f"@{version}" if version is not None else ""
    return f"project:{project}/dataset:{audit_text(name)}{tail}"


def _version_number(ref: str) -> int | None:
    return None if ref == "latest" else int(ref)


def dataset_read(dataset: Dataset, latest: DatasetVersion | None) -> DatasetRead:
    return DatasetRead(
        name=dataset.name,
        description=dataset.description,
        created_at=dataset.created_at,
        latest_version=latest.version if latest else None,
        file_count=latest.file_count if latest else None,
        total_size=latest.total_size if latest else None,
    )


def version_read(name: str, version: DatasetVersion, created: bool = True) -> VersionRead:
    return VersionRead(
        dataset=name,
        version=version.version,
        message=version.message,
        file_count=version.file_count,
        total_size=version.total_size,
        manifest_digest=version.manifest_digest,
        created_at=version.created_at,
        created=created,
    )


@router.post("", response_model=DatasetRead, status_code=201)
def create_dataset(project: str, body: DatasetCreate, ctx: Ctx) -> DatasetRead:
    with ctx.unit("dataset.create", _resource(project, body.name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        dataset = datasets.create(
            u.session, found.id, body.name, body.description, ctx.actor.user_id or None
        )
        return dataset_read(dataset, None)


@router.get("", response_model=list[DatasetRead])
def list_datasets(project: str, ctx: Ctx) -> list[DatasetRead]:
    with ctx.unit("dataset.list", f"project:{project}/datasets", audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return [dataset_read(d, v) for d, v in datasets.list_all(u.session, found.id)]


@router.get("/{name}", response_model=DatasetRead)
def read_dataset(project: str, name: DatasetName, ctx: Ctx) -> DatasetRead:
    with ctx.unit("dataset.read", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        dataset = datasets.get(u.session, found.id, name)
        versions = datasets.list_versions(u.session, found.id, name)
        return dataset_read(dataset, versions[0] if versions else None)


@router.delete("/{name}", status_code=204)
def delete_dataset(project: str, name: DatasetName, ctx: Ctx) -> Response:
    with ctx.unit("dataset.delete", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        datasets.remove(u.session, found.id, name)
    return Response(status_code=204)


@router.post("/{name}/missing", response_model=MissingDigests)
def missing_blobs(project: str, name: DatasetName, body: DigestList, ctx: Ctx) -> MissingDigests:
    """Which of these file digests the project lacks: the first step of a push."""
    _check_name(name)  # refuse a bad name before anything is uploaded
    with ctx.unit("dataset.plan", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        return MissingDigests(missing=datasets.missing(u.session, found.id, body.digests))


@router.post(
    "/{name}/versions",
    response_model=VersionRead,
    status_code=201,
    responses={
        200: {
            "model": VersionRead,
            "description": "The manifest equals the latest version's: that version, unchanged",
        }
    },
)
def create_version(
    project: str, name: DatasetName, body: VersionCreate, ctx: Ctx, response: Response
) -> VersionRead:
    """Commit a manifest as the next version (the dataset is created on first push). A
    manifest equal to the latest version's answers 200 with that version."""
    _check_name(name)
    with ctx.unit("dataset.version.create", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        files = [FileEntry(f.path, f.digest, f.size, f.media_type) for f in body.files]
        version, created = datasets.commit_version(
            u.session,
            found.id,
            name,
            files,
            message=body.message,
            created_by=ctx.actor.user_id or None,
        )
        u.resource = _resource(project, name, version.version)
        u.detail = {"files": version.file_count, "bytes": version.total_size, "new": created}
        if not created:
            response.status_code = 200
        return version_read(name, version, created)


@router.get("/{name}/versions", response_model=list[VersionRead])
def list_versions(project: str, name: DatasetName, ctx: Ctx) -> list[VersionRead]:
    with ctx.unit("dataset.read", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return [version_read(name, v) for v in datasets.list_versions(u.session, found.id, name)]


@router.get("/{name}/versions/{version}", response_model=VersionRead)
def read_version(project: str, name: DatasetName, version: VersionRef, ctx: Ctx) -> VersionRead:
    with ctx.unit("dataset.read", _resource(project, name, version), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        row = datasets.get_version(u.session, found.id, name, _version_number(version))
        return version_read(name, row)


@router.get("/{name}/versions/{version}/files", response_model=FilePage)
def list_files(
    project: str,
    name: DatasetName,
    version: VersionRef,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    after: Annotated[str, Query(max_length=1024, pattern=r"^[^\x00]*$")] = "",
) -> FilePage:
    """The version's manifest in path order, a page at a time (``after`` is the cursor)."""
    with ctx.unit("dataset.read", _resource(project, name, version), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        row = datasets.get_version(u.session, found.id, name, _version_number(version))
        files = datasets.list_files(u.session, row, limit=limit + 1, after=after)
        more = len(files) > limit
        files = files[:limit]
        return FilePage(
            files=[FileEntryModel.model_validate(f) for f in files],
            next_after=files[-1].path if more else None,
        )


@router.get("/{name}/diff", response_model=DiffRead)
def diff_versions(
    project: str,
    name: DatasetName,
    ctx: Ctx,
    from_version: Annotated[int, Query(alias="from", ge=1)],
    to_version: Annotated[int | None, Query(alias="to", ge=1)] = None,
) -> DiffRead:
    """Files added, removed and changed from one version to another (default: the latest)."""
    with ctx.unit("dataset.read", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        before = datasets.get_version(u.session, found.id, name, from_version)
        after = datasets.get_version(u.session, found.id, name, to_version)
        change = datasets.diff(u.session, before, after)
        return DiffRead(
            dataset=name,
            from_version=before.version,
            to_version=after.version,
            added=[FileEntryModel.model_validate(f) for f in change.added],
            removed=[FileEntryModel.model_validate(f) for f in change.removed],
            changed=[
                FileChange(
                    path=a.path,
                    before=FileEntryModel.model_validate(a),
                    after=FileEntryModel.model_validate(b),
                )
                for a, b in change.changed
            ],
        )


def _check_name(name: str) -> None:
    """A dataset made by a push gets the same name rules as one made by ``POST``."""
    if not identity.NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"dataset name {audit_text(name)} must be 1-63 characters: a lowercase letter, "
            "then lowercase letters, digits, '-' or '_'"
        )
