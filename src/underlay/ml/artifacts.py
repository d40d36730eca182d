"""Artifacts of a run: files stored as encrypted blobs of the run's project.

Logging an artifact is two steps, as a dataset push is: the client uploads the file as a blob
(content-addressed: the same bytes are stored once however many runs log them), then records
``(run, path) -> digest`` here, checked against the blob's size. A path is a relative POSIX
path without ``.`` or ``..`` segments (checked here and by every reader that writes files).
The same path logged again with the same bytes is a no-op; with other bytes a conflict.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay.data.manifest import check_path
from underlay.errors import Conflict, InvalidInput, NotFound
from underlay.ml.models import RunArtifact
from underlay.ml.runs import check_running, read_run
from underlay.ml.schemas import ArtifactCreate
from underlay.store.models import Blob


def add_artifact(
    session: Session, project_id: int, run_id: int, body: ArtifactCreate
) -> tuple[RunArtifact, bool]:
    """Record an uploaded blob as the run's file ``body.path``; returns it and whether new."""
    check_path(body.path)
    run = read_run(session, project_id, run_id, lock=True)
    existing = session.scalar(
        select(RunArtifact).where(RunArtifact.run_id == run.id, RunArtifact.path == body.path)
    )
    if existing is not None:
        if existing.digest == body.digest:
            return existing, False
        raise Conflict(
            f"run {run_id} already has an artifact {body.path!r} with other content "
            f"(sha256:{existing.digest}); artifacts are written once",
            path=body.path,
        )
    check_running(run)
    size = session.scalar(
        select(Blob.size).where(Blob.project_id == project_id, Blob.digest == body.digest)
    )
    if size is None:
        raise InvalidInput(
            f"artifact {body.path!r} names no blob of this project (sha256:{body.digest}): "
            "upload it first"
        )
    if size != body.size:
        raise InvalidInput(
            f"artifact {body.path!r} says {body.size} bytes but its blob holds {size}"
        )
    artifact = RunArtifact(
        project_id=project_id,
        run_id=run.id,
        path=body.path,
        digest=body.digest,
        size=body.size,
        media_type=body.media_type,
    )
    session.add(artifact)
    session.flush()
    return artifact, True


def list_artifacts(
    session: Session, project_id: int, run_id: int, prefix: str = ""
) -> list[RunArtifact]:
    """The run's artifacts in path order (those under ``prefix``, if given)."""
    run = read_run(session, project_id, run_id)
    query = select(RunArtifact).where(RunArtifact.run_id == run.id)
    if prefix:
        query = query.where(RunArtifact.path.startswith(prefix.rstrip("/") + "/", autoescape=True))
    return list(session.scalars(query.order_by(RunArtifact.path)))


def read_artifact(session: Session, project_id: int, run_id: int, path: str) -> RunArtifact:
    run = read_run(session, project_id, run_id)
    found = session.scalar(
        select(RunArtifact).where(RunArtifact.run_id == run.id, RunArtifact.path == path)
    )
    if found is None:
        raise NotFound(f"run {run_id} has no artifact {path[:200]!r}")
    return found
