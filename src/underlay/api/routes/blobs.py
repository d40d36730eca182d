"""Blobs of a project: streamed upload, streamed download (an audited sensitive read)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from underlay import identity
from underlay.api.deps import Ctx
from underlay.api.limits import BINARY_BODY, run_upload
from underlay.blobs import BlobStore, StagedBlob, check_digest
from underlay.data import folders
from underlay.errors import InvalidInput
from underlay.identity import Action
from underlay.schemas import BlobRead

router = APIRouter(prefix="/projects/{project}/blobs", tags=["blobs"])

DigestPath = Annotated[str, "sha256 hex"]
MAX_BATCH = 256  # blobs of one batch upload: each holds an open, locked file until the commit


@router.put(
    "",
    response_model=BlobRead,
    status_code=201,
    openapi_extra=BINARY_BODY,
)
async def upload_blob(
    project: str,
    request: Request,
    ctx: Ctx,
    name: Annotated[str, Query(max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$")] = "",
    media_type: Annotated[str, Query(max_length=127, pattern=r"^[\w.+-]+/[\w.+-]+$")] = (
        "application/octet-stream"
    ),
    digest: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
) -> BlobRead:
    """Store the request body as a blob; returns its SHA-256 digest. Idempotent by content."""

    def store(body: Iterator[bytes]) -> BlobRead:
        # Stream outside any transaction (SQLite's write lock is not held during the
        # upload), then authorize again and commit in a short one.
        blobs, resource = ctx.platform.blobs, f"project:{project}/blob"
        with ctx.unit("blob.create", resource, project=project, audited=False) as u:
            found = identity.read_project(u.session, project, ctx.actor, Action.write)
            key = ctx.platform.keyring.data_key(u.session, found.id)
        with (
            ctx.unit("blob.create", resource, project=project) as u,
            blobs.stage(key, body, expected_digest=digest) as staged,
        ):
            found = identity.read_project(u.session, project, ctx.actor, Action.write)
            blob = blobs.commit(
                u.session,
                found.id,
                staged,
                name=name,
                media_type=media_type,
                created_by=ctx.actor.user_id or None,
            )
            u.resource = f"{resource}:{blob.digest}"
            u.detail = {"size": blob.size, "name": name}
            return BlobRead.model_validate(blob)

    return await run_upload(request, store)


@router.put(
    "/batch",
    response_model=list[BlobRead],
    status_code=201,
    openapi_extra=BINARY_BODY,
)
async def upload_blobs(project: str, request: Request, ctx: Ctx) -> list[BlobRead]:
    """Store many small blobs sent in one body, as frames (:mod:`underlay.data.folders`) each
    named by the SHA-256 its content must have: one request, one transaction and one audit
    entry for all of them instead of one each. All or nothing: a frame whose content has
    another digest, or a malformed body, stores none."""

    def store(body: Iterator[bytes]) -> list[BlobRead]:
        blobs, resource = ctx.platform.blobs, f"project:{project}/blobs"
        with ctx.unit("blob.create", resource, project=project, audited=False) as u:
            found = identity.read_project(u.session, project, ctx.actor, Action.write)
            key = ctx.platform.keyring.data_key(u.session, found.id)
        with contextlib.ExitStack() as held:
            staged: list[StagedBlob] = []
            for name, content in folders.read_frames(body):
                if len(staged) >= MAX_BATCH:
                    raise InvalidInput(f"a blob batch holds at most {MAX_BATCH} blobs")
                digest = check_digest(name)
                staged.append(held.enter_context(blobs.stage(key, content, expected_digest=digest)))
            with ctx.unit("blob.create", resource, project=project) as u:
                found = identity.read_project(u.session, project, ctx.actor, Action.write)
                user = ctx.actor.user_id or None
                rows = [blobs.commit(u.session, found.id, s, created_by=user) for s in staged]
                u.detail = {
                    "blobs": len(rows),
                    "bytes": sum(r.size for r in rows),
                    "digests": [r.digest for r in rows[:20]],
                }
                return [BlobRead.model_validate(r) for r in rows]

    return await run_upload(request, store)


@router.get("", response_model=list[BlobRead])
def list_blobs(
    project: str,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[BlobRead]:
    with ctx.unit("blob.list", f"project:{project}/blobs", project=project, audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        blobs = ctx.platform.blobs.list_blobs(u.session, found.id, limit=limit, offset=offset)
        return [BlobRead.model_validate(b) for b in blobs]


@router.get("/{digest}", response_model=BlobRead)
def read_blob(project: str, digest: str, ctx: Ctx) -> BlobRead:
    resource = f"project:{project}/blob:{digest[:64]}"
    with ctx.unit("blob.read_meta", resource, project=project, audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return BlobRead.model_validate(ctx.platform.blobs.read_blob(u.session, found.id, digest))


@router.get(
    "/{digest}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_blob(project: str, digest: str, ctx: Ctx) -> StreamingResponse:
    """The blob's bytes, decrypted and verified while streaming; audited as a sensitive read."""
    resource = f"project:{project}/blob:{digest[:64]}"
    with ctx.unit("blob.read", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        digest = ctx.platform.blobs.resolve(u.session, found.id, digest)
        u.resource = f"project:{project}/blob:{digest}"  # the full digest, not the prefix given
        return stream_blob(ctx.platform.blobs, u.session, found.id, digest)


def stream_blob(
    blobs: BlobStore,
    session: Session,
    project_id: int,
    digest: str,
    media_type: str | None = None,
) -> StreamingResponse:
    """A response streaming a blob, decrypted and verified chunk by chunk. The first chunk is
    read here, inside the caller's unit, so a corrupt head fails before the status line."""
    blob = blobs.read_blob(session, project_id, digest)
    chunks = blobs.open(session, project_id, blob.digest)
    first = next(chunks, b"")

    def body() -> Iterator[bytes]:
        if first:
            yield first
        yield from chunks

    headers = {"Content-Length": str(blob.size), "X-Content-SHA256": blob.digest}
    return StreamingResponse(body(), media_type=media_type or blob.media_type, headers=headers)


@router.delete("/{digest}", status_code=204)
def delete_blob(project: str, digest: str, ctx: Ctx) -> Response:
    resource = f"project:{project}/blob:{digest[:64]}"
    with ctx.unit("blob.delete", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        digest = ctx.platform.blobs.resolve(u.session, found.id, digest)
        u.resource = f"project:{project}/blob:{digest}"
        ctx.platform.blobs.delete_blob(u.session, found.id, digest)
    return Response(status_code=204)
