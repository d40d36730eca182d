"""The model registry of a project: models, signed versions, aliases and their history, cards,
and the verified load (see underlay.ml.registry.service).

A version is named by its number, an alias or ``latest``. Another project's models answer
exactly as missing ones do (the project lookup refuses first).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from sqlalchemy.orm import Session

from underlay import identity
from underlay.api.deps import Ctx
from underlay.errors import InvalidInput
from underlay.identity import Action
from underlay.ml.registry import aliases, service
from underlay.ml.registry.models import ModelVersion, RegisteredModel
from underlay.ml.registry.schemas import (
    AliasEventRead,
    AliasHistoryRead,
    AliasSet,
    CardRead,
    ManifestFileRead,
    ModelCreate,
    ModelRead,
    ModelUpdate,
    ModelVersionRead,
    RefusalReport,
    VerifiedManifestRead,
    VersionRegister,
)
from underlay.platform import audit_text

router = APIRouter(prefix="/projects/{project}/models", tags=["models"])

ModelName = Annotated[str, Path(max_length=63)]
VersionRef = Annotated[str, Path(pattern=r"^(latest|[1-9][0-9]{0,8}|[a-z][a-z0-9_-]{0,62})$")]
AliasPath = Annotated[str, Path(max_length=63)]


def _resource(project: str, name: str, version: object = None) -> str:
    tail = f"@{audit_text(str(version))}" if version is not None else ""
    return f"project:{project}/model:{audit_text(name)}{tail}"


def model_read(session: Session, model: RegisteredModel, latest: int | None = None) -> ModelRead:
    if latest is None:
        versions = service.list_versions(session, model.project_id, model.name)
        latest = versions[0].version if versions else None
    read = ModelRead.model_validate(model)
    read.latest_version = latest
    read.aliases = service.aliases_of(session, model)
    return read


def version_read(session: Session, name: str, version: ModelVersion) -> ModelVersionRead:
    return ModelVersionRead(
        model=name,
        version=version.version,
        run=version.run_id,
        artifact_path=version.artifact_path,
        flavor=version.flavor,
        description=version.description,
        file_count=version.file_count,
        total_size=version.total_size,
        signature=json.loads(version.signature or "{}"),
        key_id=version.key_id,
        signed=bool(version.manifest_signature),
        aliases=service.version_aliases(session, version),
        created_at=version.created_at,
    )


@router.post("", response_model=ModelRead, status_code=201)
def create_model(project: str, body: ModelCreate, ctx: Ctx) -> ModelRead:
    with ctx.unit("model.create", _resource(project, body.name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        fields = body.model_dump(exclude={"name"})
        model = service.create_model(
            u.session, found.id, body.name, fields, ctx.actor.user_id or None
        )
        return model_read(u.session, model, None)


@router.get("", response_model=list[ModelRead])
def list_models(project: str, ctx: Ctx) -> list[ModelRead]:
    with ctx.unit("model.list", f"project:{project}/models", audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        rows = service.list_models(u.session, found.id)
        reads = []
        for model, latest, aliases in rows:
            read = ModelRead.model_validate(model)
            read.latest_version, read.aliases = latest, aliases
            reads.append(read)
        return reads


@router.get("/{name}", response_model=ModelRead)
def read_model(project: str, name: ModelName, ctx: Ctx) -> ModelRead:
    with ctx.unit("model.read", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return model_read(u.session, service.get_model(u.session, found.id, name))


@router.patch("/{name}", response_model=ModelRead)
def update_model(project: str, name: ModelName, body: ModelUpdate, ctx: Ctx) -> ModelRead:
    """Set the card fields: description, intended use, limitations, licences."""
    with ctx.unit("model.update", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        changes = body.model_dump(exclude_none=True)
        model = service.update_model(u.session, found.id, name, changes)
        u.detail = {"fields": sorted(changes)}
        return model_read(u.session, model)


@router.delete("/{name}", status_code=204)
def delete_model(project: str, name: ModelName, ctx: Ctx) -> Response:
    with ctx.unit("model.delete", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        u.detail = {"versions": service.delete_model(u.session, found.id, name)}
    return Response(status_code=204)


@router.post("/{name}/versions", response_model=ModelVersionRead, status_code=201)
def register_version(
    project: str, name: ModelName, body: VersionRegister, ctx: Ctx
) -> ModelVersionRead:
    """Sign a run's artifacts under ``path`` as the next version (the model is created on
    first registration)."""
    _check_name(name)
    with ctx.unit("model.version.create", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        version = service.register_from_run(
            u.session,
            ctx.platform.blobs,
            ctx.platform.signer,
            found.id,
            name,
            run_id=body.run,
            path=body.path,
            description=body.description,
            created_by=ctx.actor.user_id or None,
        )
        u.resource = _resource(project, name, version.version)
        u.detail = {"run": body.run, "path": body.path, "files": version.file_count}
        return version_read(u.session, name, version)


@router.get("/{name}/versions", response_model=list[ModelVersionRead])
def list_versions(project: str, name: ModelName, ctx: Ctx) -> list[ModelVersionRead]:
    with ctx.unit("model.read", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        rows = service.list_versions(u.session, found.id, name)
        return [version_read(u.session, name, v) for v in rows]


@router.get("/{name}/versions/{ref}", response_model=ModelVersionRead)
def read_version(project: str, name: ModelName, ref: VersionRef, ctx: Ctx) -> ModelVersionRead:
    with ctx.unit("model.read", _resource(project, name, ref), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return version_read(u.session, name, service.get_version(u.session, found.id, name, ref))


@router.post("/{name}/versions/{ref}/verify", response_model=VerifiedManifestRead)
def verify_version(
    project: str, name: ModelName, ref: VersionRef, ctx: Ctx
) -> VerifiedManifestRead:
    """Check the signature and every file's bytes; the first step of a load, audited as
    ``model.load`` (a refusal too, naming the file)."""
    with ctx.unit("model.load", _resource(project, name, ref), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        version = service.get_version(u.session, found.id, name, ref)
        u.resource = _resource(project, name, version.version)
        checked = service.verify_version(
            u.session, ctx.platform.blobs, ctx.platform.signer, found.id, name, version
        )
        return VerifiedManifestRead(
            model=name,
            version=version.version,
            flavor=version.flavor,
            manifest=checked.manifest.decode("utf-8"),
            signature=base64.b64encode(checked.signature).decode("ascii"),
            key_id=checked.key_id,
            public_key=base64.b64encode(checked.public_key).decode("ascii"),
            files=[
                ManifestFileRead(path=f.path, sha256=f.sha256, size=f.size) for f in checked.files
            ],
        )


@router.post("/{name}/versions/{ref}/refusals", status_code=204)
def report_refusal(
    project: str, name: ModelName, ref: VersionRef, body: RefusalReport, ctx: Ctx
) -> Response:
    """Record that a client refused a version it downloaded (a file that did not match the
    signed manifest on arrival): audited as ``model.load`` with outcome ``denied``."""
    with ctx.unit("model.read", _resource(project, name, ref), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        version = service.get_version(u.session, found.id, name, ref)
    ctx.platform.audit.record(
        actor=ctx.actor.name,
        action="model.load",
        resource=_resource(project, name, version.version),
        project=project,
        client=ctx.client,
        outcome="denied",
        detail={"file": audit_text(body.file, 1024), "error": audit_text(body.reason, 1000)},
    )
    return Response(status_code=204)


@router.put("/{name}/aliases/{alias}", response_model=AliasEventRead)
def set_alias(
    project: str, name: ModelName, alias: AliasPath, body: AliasSet, ctx: Ctx
) -> AliasEventRead:
    """Point an alias at a version; the move is recorded with who, when and why."""
    resource = f"{_resource(project, name)}/alias:{audit_text(alias)}"
    with ctx.unit("model.alias.set", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        event = aliases.set_alias(
            u.session,
            found.id,
            name,
            alias,
            body.version,
            actor=ctx.actor.name,
            reason=body.reason,
        )
        u.detail = {
            "version": body.version,
            "previous": event.previous_version,
            "reason": body.reason,
        }
        return AliasEventRead.model_validate(event)


@router.delete("/{name}/aliases/{alias}", response_model=AliasEventRead)
def remove_alias(
    project: str,
    name: ModelName,
    alias: AliasPath,
    ctx: Ctx,
    reason: Annotated[str, Query(min_length=1, max_length=1000, pattern=r"^[^\x00-\x1f\x7f]*$")],
) -> AliasEventRead:
    resource = f"{_resource(project, name)}/alias:{audit_text(alias)}"
    with ctx.unit("model.alias.remove", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        event = aliases.remove_alias(
            u.session, found.id, name, alias, actor=ctx.actor.name, reason=reason
        )
        u.detail = {"previous": event.previous_version, "reason": reason}
        return AliasEventRead.model_validate(event)


@router.get("/{name}/history", response_model=AliasHistoryRead)
def alias_history(
    project: str,
    name: ModelName,
    ctx: Ctx,
    alias: Annotated[str | None, Query(max_length=63, pattern=r"^[a-z][a-z0-9_-]{0,62}$")] = None,
    at: dt.datetime | None = None,
) -> AliasHistoryRead:
    """Every alias move, oldest first; with ``at``, the moves up to then and which version
    each alias named at that moment (``?alias=champion&at=2026-05-01T00:00Z``)."""
    with ctx.unit("model.read", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        events, held = aliases.alias_history(u.session, found.id, name, alias=alias, at=at)
        return AliasHistoryRead(
            model=name,
            at=at,
            held=held,
            events=[AliasEventRead.model_validate(e) for e in events],
        )


@router.get("/{name}/versions/{ref}/card", response_model=CardRead)
def model_card(
    project: str,
    name: ModelName,
    ref: VersionRef,
    ctx: Ctx,
    format: Literal["markdown", "html"] = "markdown",
) -> CardRead:
    """The version's model card, from the registry, its run's metrics and lineage."""
    with ctx.unit("model.read", _resource(project, name, ref), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return service.card(u.session, found, name, ref, format)


def _check_name(name: str) -> None:
    """A model made by a registration gets the same name rules as one made by ``POST``."""
    if not identity.NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"model name {audit_text(name)} must be 1-63 characters: a lowercase letter, "
            "then lowercase letters, digits, '-' or '_'"
        )
