"""Registering an export as a signed registry version, with lineage to its source.

The conversion itself runs where the model may run — in the SDK or CLI process that loaded the
verified source version — never in the server: a PyTorch module is user code (DESIGN.md,
invariant 6). The server receives the files (uploaded as blobs), checks that they are an
``onnx`` flavor model with an export report whose gate passed, signs them as the next version
of the target model (``NAME-onnx`` unless named) and records ``NAME@v --exported--> target@w``.
The report is one of the signed files, so it cannot be changed after registration.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from pydantic import ValidationError
from sqlalchemy.orm import Session

from underlay import lineage
from underlay.blobs import BlobStore
from underlay.crypto import SigningKey
from underlay.errors import InvalidInput, NotFound
from underlay.ml.export.exporter import REPORT_FILE
from underlay.ml.export.report import ExportRefused, ExportReport
from underlay.ml.flavors import METADATA_FILE
from underlay.ml.registry import service as registry
from underlay.ml.registry.models import ModelVersion

EXPORT_PATH = "export"
MAX_JSON_BYTES = 1024 * 1024


def target_name(name: str, target: str | None) -> str:
    """The model an export of ``name`` goes to: ``target``, else ``NAME-onnx``."""
    chosen = target or f"{name}-onnx"
    if len(chosen) > 63:
        raise InvalidInput(
            f"{chosen!r} is longer than 63 characters: name the target model (--to NAME)"
        )
    return chosen


def register_export(
    session: Session,
    blobs: BlobStore,
    signer: SigningKey,
    project_id: int,
    name: str,
    ref: str,
    *,
    target: str | None,
    files: Sequence[registry.ArtifactFile],
    created_by: int | None = None,
) -> tuple[ModelVersion, ModelVersion, ExportReport]:
    """Sign ``files`` as the next version of the target model; (source, export, report)."""
    source = registry.get_version(session, project_id, name, ref)
    chosen = target_name(name, target)
    meta = _json(session, blobs, project_id, files, METADATA_FILE)
    if not isinstance(meta, dict) or meta.get("flavor") != "onnx":
        raise InvalidInput(f"an export registers an onnx model: {METADATA_FILE} names another")
    try:
        report = ExportReport.model_validate(_json(session, blobs, project_id, files, REPORT_FILE))
    except ValidationError as exc:
        message = exc.errors()[0]["msg"]
        raise InvalidInput(f"{REPORT_FILE} is not an export report: {message}") from None
    if (
        not report.passed
        or not math.isfinite(report.change)
        or (abs(report.change) > report.tolerance)
    ):
        raise ExportRefused(
            f"export refused: its report says {report.metric} changed by {report.change:+.3f} "
            f"(tolerance {report.tolerance:g}); nothing was registered",
            report=report.model_dump(mode="json"),
        )
    version = registry.register_version(
        session,
        blobs,
        signer,
        project_id,
        chosen,
        run=None,
        artifact_path=EXPORT_PATH,
        files=files,
        description=f"ONNX export ({report.quantize}) of {name}@{source.version}"[:1000],
        created_by=created_by,
    )
    lineage.add_edge(
        session,
        project_id,
        registry.version_ref(name, source.version),
        "exported",
        registry.version_ref(chosen, version.version),
    )
    return source, version, report


def _json(
    session: Session,
    blobs: BlobStore,
    project_id: int,
    files: Sequence[registry.ArtifactFile],
    path: str,
) -> object:
    entry = next((f for f in files if f.path == path), None)
    if entry is None:
        raise InvalidInput(f"an export holds {METADATA_FILE} and {REPORT_FILE}; {path} is missing")
    if entry.size > MAX_JSON_BYTES:
        raise InvalidInput(f"{path} is larger than {MAX_JSON_BYTES} bytes")
    try:
        data = b"".join(blobs.open(session, project_id, entry.digest))
    except NotFound:
        raise InvalidInput(f"{path} names no blob of this project: upload it first") from None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"{path} is not JSON: {exc}") from None
