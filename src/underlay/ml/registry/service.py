"""The registry's service: models, signed versions, aliases and their history.

* **Versions** are made from files a run already stored as blobs (its artifacts under one
  path). Registration reads the run's ``underlay-model.json`` for the flavor and signature,
  writes the manifest, signs it, and adds the version, its file rows and the lineage edge
  ``run --produced--> model_version`` in one transaction. Numbers are taken under a lock on
  the model row, so two concurrent registrations never share one.
* **Aliases** live in :mod:`underlay.ml.registry.aliases`.
* **Verification** (:func:`verify_version`) is what a load runs on the server: signature,
  binding, then every file read back from the blob store (whose AEAD check fails on an altered
  byte) and hashed against the manifest. The first failure names its file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, delete, exc, func, insert, select
from sqlalchemy.orm import Session

from underlay import lineage
from underlay.blobs import BlobStore, check_digest
from underlay.crypto import SigningKey
from underlay.data.manifest import check_path
from underlay.errors import Conflict, IntegrityFailure, InvalidInput, NotFound
from underlay.ml.artifacts import list_artifacts
from underlay.ml.flavors import METADATA_FILE
from underlay.ml.models import LatestMetric, RunParam
from underlay.ml.registry.manifest import (
    ArtifactRefused,
    Manifest,
    ManifestFile,
    check_binding,
    check_file,
    check_signature,
)
from underlay.ml.registry.models import (
    ModelAlias,
    ModelAliasEvent,
    ModelVersion,
    ModelVersionFile,
    RegisteredModel,
)
from underlay.ml.registry.schemas import CardRead, CardSectionRead
from underlay.store.models import Blob, Project
from underlay.store.types import utcnow

MAX_FILES = 10_000
MAX_METADATA_BYTES = 1024 * 1024
CARD_FIELDS = ("description", "intended_use", "limitations", "license", "data_license")
RUN_KIND = "run"
VERSION_KIND = "model_version"
DATA_KINDS = ("dataset_version", "table_version")


@dataclass(frozen=True)
class ArtifactFile:
    """A file to register: its path under the version's root and its blob."""

    path: str
    digest: str
    size: int


@dataclass(frozen=True)
class VerifiedVersion:
    """What a verified load hands the client: the signed manifest and how to check it."""

    version: ModelVersion
    manifest: bytes
    signature: bytes
    key_id: str
    public_key: bytes
    files: list[ManifestFile]


def version_ref(name: str, version: int) -> lineage.ObjectRef:
    return lineage.ObjectRef(VERSION_KIND, f"{name}@{version}")


def describe(name: str, version: int) -> str:
    return f"model {name!r} version {version}"


# -- models ----------------------------------------------------------------------------------


def create_model(
    session: Session,
    project_id: int,
    name: str,
    fields: dict[str, str] | None = None,
    created_by: int | None = None,
) -> RegisteredModel:
    """A new registered model; :class:`Conflict` if the project has one of that name."""
    model = RegisteredModel(project_id=project_id, name=name, created_by=created_by)
    _apply(model, fields or {})
    try:
        with session.begin_nested():
            session.add(model)
    except exc.IntegrityError:
        raise Conflict(f"model {name!r} already exists in this project") from None
    return model


def get_model(
    session: Session, project_id: int, name: str, *, lock: bool = False
) -> RegisteredModel:
    query = _by_name(project_id, name)
    found = session.scalar(query.with_for_update() if lock else query)
    if found is None:
        raise NotFound(f"model {name[:80]!r} not found")
    return found


def get_or_create(
    session: Session, project_id: int, name: str, created_by: int | None
) -> RegisteredModel:
    """The model, locked until the transaction ends; created on first registration."""
    found = session.scalar(_by_name(project_id, name).with_for_update())
    if found is not None:
        return found
    try:
        return create_model(session, project_id, name, None, created_by)
    except Conflict:
        return get_model(session, project_id, name, lock=True)


def list_models(
    session: Session, project_id: int
) -> list[tuple[RegisteredModel, int | None, dict[str, int]]]:
    """Every model with its latest version number and its aliases."""
    models = list(
        session.scalars(
            select(RegisteredModel)
            .where(RegisteredModel.project_id == project_id)
            .order_by(RegisteredModel.name)
        )
    )
    ids = [m.id for m in models]
    latest: dict[int, int] = {}
    if ids:
        rows = session.execute(
            select(ModelVersion.model_id, func.max(ModelVersion.version))
            .where(ModelVersion.model_id.in_(ids))
            .group_by(ModelVersion.model_id)
        )
        latest = {model_id: int(v) for model_id, v in rows}
    aliases = _aliases(session, ids)
    return [(m, latest.get(m.id), aliases.get(m.id, {})) for m in models]


def update_model(
    session: Session, project_id: int, name: str, changes: dict[str, str]
) -> RegisteredModel:
    model = get_model(session, project_id, name, lock=True)
    _apply(model, changes)
    model.updated_at = utcnow()
    session.flush()
    return model


def delete_model(session: Session, project_id: int, name: str) -> int:
    """Delete a model, its versions, aliases and history, and their lineage edges; the blobs
    stay with the run that made them. Returns how many versions went."""
    model = get_model(session, project_id, name, lock=True)
    versions = list(
        session.scalars(select(ModelVersion.version).where(ModelVersion.model_id == model.id))
    )
    for number in versions:
        lineage.delete_edges_for(session, project_id, version_ref(name, number))
    _delete_model_rows(session, [model.id])
    return len(versions)


def purge_project(session: Session, project_id: int) -> None:
    """Remove every registry row of a project (before its blobs and the project row go)."""
    ids = list(
        session.scalars(select(RegisteredModel.id).where(RegisteredModel.project_id == project_id))
    )
    _delete_model_rows(session, ids)


def aliases_of(session: Session, model: RegisteredModel) -> dict[str, int]:
    return _aliases(session, [model.id]).get(model.id, {})


# -- versions --------------------------------------------------------------------------------


def register_version(
    session: Session,
    blobs: BlobStore,
    signer: SigningKey,
    project_id: int,
    name: str,
    *,
    run: int | None,
    artifact_path: str,
    files: Sequence[ArtifactFile],
    description: str = "",
    created_by: int | None = None,
) -> ModelVersion:
    """Sign and add the next version of ``name`` (created if new) from a run's files."""
    files = _checked_files(session, project_id, files, artifact_path)
    meta = _read_metadata(session, blobs, project_id, files, artifact_path)
    model = get_or_create(session, project_id, name, created_by)
    latest = session.scalar(
        select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
    )
    number = int(latest or 0) + 1
    manifest = Manifest(
        project_id=project_id,
        model=name,
        version=number,
        run="" if run is None else str(run),
        path=artifact_path,
        flavor=meta["flavor"],
        files=[ManifestFile(f.path, f.digest, f.size) for f in files],
    )
    data = manifest.to_bytes()
    version = ModelVersion(
        project_id=project_id,
        model_id=model.id,
        version=number,
        run_id=run,
        artifact_path=artifact_path,
        flavor=meta["flavor"],
        signature=json.dumps(meta.get("signature") or {}, sort_keys=True),
        description=description,
        file_count=len(files),
        total_size=sum(f.size for f in files),
        manifest=data,
        manifest_signature=signer.sign(data),
        key_id=signer.key_id,
        created_by=created_by,
    )
    session.add(version)
    session.flush()
    rows = [
        {
            "project_id": project_id,
            "version_id": version.id,
            "path": f.path,
            "digest": f.digest,
            "size": f.size,
        }
        for f in files
    ]
    session.execute(insert(ModelVersionFile), rows)
    if run is not None:
        _link(session, project_id, run, version_ref(name, number))
    return version


def get_version(session: Session, project_id: int, name: str, ref: str | int) -> ModelVersion:
    """A version by number, alias or ``latest``."""
    model = get_model(session, project_id, name)
    text = str(ref)
    if text.isdigit():
        number = int(text)
    elif text == "latest":
        latest = session.scalar(
            select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
        )
        if latest is None:
            raise NotFound(f"model {name!r} has no version yet")
        number = int(latest)
    else:
        alias = session.scalar(
            select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == text)
        )
        if alias is None:
            raise NotFound(f"model {name!r} has no alias {text[:63]!r}")
        found = session.get(ModelVersion, alias.version_id)
        assert found is not None  # the foreign key holds it
        return found
    row = session.scalar(
        select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.version == number
        )
    )
    if row is None:
        raise NotFound(f"model {name!r} has no version {number}")
    return row


def list_versions(session: Session, project_id: int, name: str) -> list[ModelVersion]:
    model = get_model(session, project_id, name)
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.model_id == model.id)
            .order_by(ModelVersion.version.desc())
        )
    )


def version_aliases(session: Session, version: ModelVersion) -> list[str]:
    return sorted(
        session.scalars(select(ModelAlias.alias).where(ModelAlias.version_id == version.id))
    )


def verify_version(
    session: Session,
    blobs: BlobStore,
    signer: SigningKey,
    project_id: int,
    name: str,
    version: ModelVersion,
) -> VerifiedVersion:
    """Check a version's signature and every file's bytes (see the module docstring)."""
    what = describe(name, version.version)
    signature = version.manifest_signature
    public = signer.public_key_bytes()
    check_signature(version.manifest, signature, version.key_id, public, signer.key_id, what)
    assert signature is not None
    manifest = Manifest.from_bytes(version.manifest, what)
    check_binding(manifest, project_id, name, version.version, what)
    rows = {
        f.path: f
        for f in session.scalars(
            select(ModelVersionFile).where(ModelVersionFile.version_id == version.id)
        )
    }
    for entry in manifest.files:
        row = rows.get(entry.path)
        if row is None:
            raise ArtifactRefused(
                f"file {entry.path!r} of {what} is in its signed manifest but not in the "
                "registry: load refused",
                entry.path,
            )
        hasher, size = hashlib.sha256(), 0
        try:
            for chunk in blobs.open(session, project_id, row.digest):
                hasher.update(chunk)
                size += len(chunk)
        except (IntegrityFailure, NotFound) as error:
            raise ArtifactRefused(
                f"file {entry.path!r} of {what} failed verification in the blob store "
                f"({error}): the stored bytes were altered or lost; load refused",
                entry.path,
            ) from None
        check_file(entry, hasher.hexdigest(), size, what)
    return VerifiedVersion(
        version, version.manifest, signature, version.key_id, public, manifest.files
    )


# -- helpers ---------------------------------------------------------------------------------


def _link(session: Session, project_id: int, run: int, target: lineage.ObjectRef) -> None:
    """``run --produced--> version``, and the run's data inputs straight to the version too
    (``trained``): deleting the run later removes its own edges, not what made the model."""
    source = lineage.ObjectRef(RUN_KIND, str(run))
    lineage.add_edge(session, project_id, source, "produced", target)
    for node in lineage.upstream(session, source, project_id=project_id).nodes:
        if node.kind in DATA_KINDS:
            lineage.add_edge(session, project_id, node, "trained", target)


def _by_name(project_id: int, name: str) -> Select[RegisteredModel]:
    return select(RegisteredModel).where(
        RegisteredModel.project_id == project_id, RegisteredModel.name == name
    )


def _apply(model: RegisteredModel, fields: dict[str, str]) -> None:
    for key, value in fields.items():
        if key not in CARD_FIELDS:
            raise InvalidInput(f"a model has no field {key!r} (fields: {', '.join(CARD_FIELDS)})")
        setattr(model, key, value)


def _aliases(session: Session, model_ids: list[int]) -> dict[int, dict[str, int]]:
    if not model_ids:
        return {}
    rows = session.execute(
        select(ModelAlias.model_id, ModelAlias.alias, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == ModelAlias.version_id)
        .where(ModelAlias.model_id.in_(model_ids))
        .order_by(ModelAlias.alias)
    )
    found: dict[int, dict[str, int]] = {}
    for model_id, alias, version in rows:
        found.setdefault(model_id, {})[alias] = int(version)
    return found


def _delete_model_rows(session: Session, model_ids: list[int]) -> None:
    if not model_ids:
        return
    version_ids = select(ModelVersion.id).where(ModelVersion.model_id.in_(model_ids))
    session.execute(delete(ModelAlias).where(ModelAlias.model_id.in_(model_ids)))
    session.execute(delete(ModelAliasEvent).where(ModelAliasEvent.model_id.in_(model_ids)))
    session.execute(delete(ModelVersionFile).where(ModelVersionFile.version_id.in_(version_ids)))
    session.execute(delete(ModelVersion).where(ModelVersion.model_id.in_(model_ids)))
    session.execute(delete(RegisteredModel).where(RegisteredModel.id.in_(model_ids)))


def _checked_files(
    session: Session, project_id: int, files: Sequence[ArtifactFile], root: str
) -> list[ArtifactFile]:
    if not files:
        raise InvalidInput(f"the run has no artifacts under {root!r}: log the model there first")
    if len(files) > MAX_FILES:
        raise InvalidInput(f"a model version holds at most {MAX_FILES} files, got {len(files)}")
    seen: set[str] = set()
    for f in files:
        check_path(f.path)
        check_digest(f.digest)
        if f.path in seen:
            raise InvalidInput(f"file path {f.path[:100]!r} appears twice")
        seen.add(f.path)
    digests = sorted({f.digest for f in files})
    rows = session.execute(
        select(Blob.digest, Blob.size).where(
            Blob.project_id == project_id, Blob.digest.in_(digests)
        )
    )
    sizes = {digest: int(size) for digest, size in rows}
    for f in files:
        if sizes.get(f.digest) != f.size:
            raise InvalidInput(f"file {f.path!r} names no blob of this project of {f.size} bytes")
    return sorted(files, key=lambda f: f.path)


def _read_metadata(
    session: Session,
    blobs: BlobStore,
    project_id: int,
    files: Sequence[ArtifactFile],
    root: str,
) -> dict[str, Any]:
    entry = next((f for f in files if f.path == METADATA_FILE), None)
    if entry is None:
        raise InvalidInput(
            f"the artifacts under {root!r} hold no {METADATA_FILE}: log the model with "
            "run.log_model(model, path) so its flavor and signature are recorded"
        )
    if entry.size > MAX_METADATA_BYTES:
        raise InvalidInput(f"{METADATA_FILE} is larger than {MAX_METADATA_BYTES} bytes")
    data = b"".join(blobs.open(session, project_id, entry.digest))
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidInput(f"{METADATA_FILE} under {root!r} is not JSON: {error}") from None
    flavor = meta.get("flavor") if isinstance(meta, dict) else None
    if not isinstance(flavor, str) or not flavor or len(flavor) > 64:
        raise InvalidInput(f"{METADATA_FILE} under {root!r} names no flavor")
    return dict(meta)


# -- faces' entry points: registration from a run, the card ------------------------------------


def register_from_run(
    session: Session,
    blobs: BlobStore,
    signer: SigningKey,
    project_id: int,
    name: str,
    *,
    run_id: int,
    path: str,
    description: str = "",
    created_by: int | None = None,
) -> ModelVersion:
    """Register the artifacts run ``run_id`` logged under ``path`` as the next version."""
    root = path.strip("/")
    check_path(root)
    artifacts = list_artifacts(session, project_id, run_id, root)
    files = [
        ArtifactFile(a.path[len(root) + 1 :], a.digest, a.size)
        for a in artifacts
        if a.path.startswith(root + "/")
    ]
    if not files:
        raise InvalidInput(
            f"run {run_id} has no artifacts under {root!r}: log the model there first "
            "(run.log_model(model, path))"
        )
    return register_version(
        session,
        blobs,
        signer,
        project_id,
        name,
        run=run_id,
        artifact_path=root,
        files=files,
        description=description,
        created_by=created_by,
    )


def card(session: Session, project: Project, name: str, ref: str, fmt: str) -> CardRead:
    """The model card of a version of ``name`` (``fmt``: markdown or html) as a ``CardRead``."""
    from underlay.ml.registry import cards

    model = get_model(session, project.id, name)
    version = get_version(session, project.id, name, ref)
    metrics, params = _run_values(session, project.id, version.run_id)
    upstream = lineage.upstream(session, version_ref(name, version.version), project_id=project.id)
    ctx = cards.CardContext(
        project=project.name,
        model=name,
        version=version.version,
        flavor=version.flavor,
        created_at=version.created_at.strftime("%Y-%m-%d %H:%M UTC"),
        description=model.description,
        intended_use=model.intended_use,
        limitations=model.limitations,
        license=model.license,
        data_license=model.data_license,
        aliases=version_aliases(session, version),
        run=version.run_id,
        signature=json.loads(version.signature or "{}"),
        key_id=version.key_id,
        metrics=metrics,
        params=params,
        data=[str(n) for n in upstream.nodes if n.kind in DATA_KINDS],
    )
    sections = cards.build(ctx)
    text = cards.to_html(ctx, sections) if fmt == "html" else cards.to_markdown(ctx, sections)
    return CardRead(
        model=name,
        version=version.version,
        format="html" if fmt == "html" else "markdown",
        text=text,
        sections=[CardSectionRead(**s.to_dict()) for s in sections],
    )


def _run_values(
    session: Session, project_id: int, run_id: int | None
) -> tuple[dict[str, float], dict[str, str]]:
    """The run's latest metric values and its params (empty if the run is gone)."""
    if run_id is None:
        return {}, {}
    metrics = {
        key: float(value)
        for key, value in session.execute(
            select(LatestMetric.key, LatestMetric.value).where(
                LatestMetric.project_id == project_id, LatestMetric.run_id == run_id
            )
        )
    }
    params = {
        key: str(value)
        for key, value in session.execute(
            select(RunParam.key, RunParam.value).where(
                RunParam.project_id == project_id, RunParam.run_id == run_id
            )
        )
    }
    return metrics, params
