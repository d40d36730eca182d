"""Registering an edge export of a model version (see underlay.ml.export.registration).

The export is computed by the SDK or CLI that loaded the verified source version; this route
signs its uploaded files as the next version of the target model, refusing a report whose
accuracy gate failed.
"""

from __future__ import annotations

from fastapi import APIRouter

from underlay import identity
from underlay.api.deps import Ctx
from underlay.api.routes.models import ModelName, VersionRef, _resource, version_read
from underlay.identity import Action
from underlay.ml.export.registration import register_export, target_name
from underlay.ml.export.schemas import ExportRead, ExportRegister
from underlay.ml.registry.service import ArtifactFile

router = APIRouter(prefix="/projects/{project}/models", tags=["models"])


@router.post("/{name}/versions/{ref}/exports", response_model=ExportRead, status_code=201)
def create_export(
    project: str,
    name: ModelName,
    ref: VersionRef,
    body: ExportRegister,
    ctx: Ctx,
) -> ExportRead:
    """Sign an exported ONNX model and its report as the next version of ``target`` (default
    ``NAME-onnx``), with lineage from the exported version."""
    target = target_name(name, body.target)
    with ctx.unit("model.version.export", _resource(project, target), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        source, version, report = register_export(
            u.session,
            ctx.platform.blobs,
            ctx.platform.signer,
            found.id,
            name,
            ref,
            target=body.target,
            files=[ArtifactFile(f.path, f.digest, f.size) for f in body.files],
            created_by=ctx.actor.user_id or None,
        )
        u.resource = _resource(project, target, version.version)
        u.detail = {"source": f"{name}@{source.version}", "quantize": report.quantize}
        return ExportRead(
            source=version_read(u.session, name, source),
            version=version_read(u.session, target, version),
            report=report.model_dump(mode="json"),
        )
