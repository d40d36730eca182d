"""HTTP client for the REST API. One synchronous client; nothing duplicated per transport."""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from underlay.client.alerts import AlertMethods
from underlay.client.compute import ComputeMethods
from underlay.client.data import DataMethods, TableMethods
from underlay.client.exports import ExportMethods
from underlay.client.ml import TrackingMethods
from underlay.client.ml_pipelines import MLPipelineMethods
from underlay.client.models import ModelMethods
from underlay.client.monitoring import MonitoringMethods
from underlay.client.pipelines import PipelineMethods
from underlay.client.retrain import RetrainMethods
from underlay.client.retries import (
    DEFAULT_BUDGET_S,
    FileBody,
    RetryPolicy,
    budget_from_env,
    nothing_sent,
    replayable_content,
)
from underlay.client.serving import ServingMethods
from underlay.errors import IntegrityFailure, Unavailable, error_for_problem
from underlay.schemas import (
    AuditEntryRead,
    AuditReportRead,
    BlobRead,
    LineageGraphRead,
    Me,
    MemberRead,
    ProjectRead,
    StatusRead,
    TokenCreated,
    TokenRead,
    UserRead,
)

M = TypeVar("M", bound=BaseModel)
CHUNK = 1024 * 1024


def _raise_for_problem(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    cls = error_for_problem(str(body.get("type", "")), response.status_code)
    detail = str(body.get("detail") or response.reason_phrase or "request failed")
    extra = {
        k: v for k, v in body.items() if k not in {"type", "title", "status", "detail", "instance"}
    }
    raise cls(detail, **extra)


class Client(
    AlertMethods,
    ComputeMethods,
    DataMethods,
    TableMethods,
    PipelineMethods,
    MLPipelineMethods,
    TrackingMethods,
    ModelMethods,
    ExportMethods,
    ServingMethods,
    RetrainMethods,
    MonitoringMethods,
):
    """A session with one underlay server; use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        verify: bool | str | ssl.SSLContext = True,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        retry_budget_s: float = DEFAULT_BUDGET_S,
    ) -> None:
        """``verify``: True, False, a CA bundle path, or an ``ssl.SSLContext``.
        ``retry_budget_s``: how long one call may go on retrying while the server cannot be
        reached or answers 502/503/504 (0: never retry); what is retried is in
        :mod:`underlay.client.retries`."""
        self.project: str | None = None  # the default project of a profile, if any
        self._retry = RetryPolicy(retry_budget_s)
        self.retries = 0  # requests sent again, over this client's life
        # how a loader's worker process connects anew (underlay.client.loader)
        self._connect = (url, token, verify, timeout_s, retry_budget_s)
        headers = {"User-Agent": "underlay-client"}
        if isinstance(verify, str):
            verify = ssl.create_default_context(cafile=verify)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=url.rstrip("/") + "/api/v1",
            headers=headers,
            verify=verify,
            timeout=timeout_s,
            transport=transport,
        )

    @classmethod
    def from_env(
        cls,
        *,
        profile: str | None = None,
        url: str | None = None,
        token: str | None = None,
        **options: Any,
    ) -> Client:
        """A client configured as the CLI is: arguments > ``UNDERLAY_URL``/``UNDERLAY_TOKEN``
        > the saved profile (``profile``, else ``UNDERLAY_PROFILE``, else the current one)
        > ``http://127.0.0.1:8765``. Inside a job the environment holds all it needs.
        ``options`` go to :class:`Client` (``verify``, ``timeout_s``, ``retry_budget_s``, which
        defaults to ``UNDERLAY_RETRY_BUDGET_S``, else 30 s)."""
        from underlay.client.profiles import resolve

        config = resolve(profile=profile, url=url, token=token)
        assert config.url.value is not None
        options.setdefault("retry_budget_s", budget_from_env(DEFAULT_BUDGET_S))
        client = cls(config.url.value, config.token.value, **options)
        client.project = config.project.value
        return client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ----------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send a request, retrying as :mod:`underlay.client.retries` says; a problem response
        is raised as its error. ``idempotent`` marks a POST the server deduplicates."""
        response = self._send(method, path, idempotent=idempotent, **kwargs)
        _raise_for_problem(response)
        return response

    def _send(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """The server's response (read unless ``stream``), sent again while that is safe and
        the retry budget lasts; a server it could not reach is ``Unavailable``."""
        attempts = self._retry.start(method, idempotent)
        kwargs["content"], once = replayable_content(kwargs.get("content"))
        while True:
            request = self._http.build_request(method, path, **kwargs)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                replayable = once is None or not once.started
                wait = attempts.after_error(exc, replayable)
                if wait is None:
                    raise self._unreachable(method, path, exc, attempts.safe, replayable) from exc
            else:
                wait = attempts.after_response(response, once is None or not once.started)
                if wait is None:
                    if stream and not response.is_success:
                        response.read()
                    return response
                response.close()
            self.retries += 1
            time.sleep(wait)

    def _unreachable(
        self, method: str, path: str, exc: httpx.TransportError, safe: bool, replayable: bool
    ) -> Unavailable:
        base, budget = self._http.base_url, self._retry.budget_s
        if nothing_sent(exc) or (safe and replayable):
            tried = f" (retried for up to {budget:g} s)" if budget else ""
            return Unavailable(f"cannot reach the server at {base}: {exc}{tried}")
        return Unavailable(
            f"the connection to the server at {base} was lost during {method} {path} ({exc}): "
            "the server may or may not have acted on it, so it was not sent again; check "
            "before repeating it"
        )

    def _one(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(self._request(method, path, **kwargs).json())

    def _many(self, model: type[M], path: str, **kwargs: Any) -> list[M]:
        return TypeAdapter(list[model]).validate_python(  # type: ignore[valid-type]
            self._request("GET", path, **kwargs).json()
        )

    # -- health, users, tokens -------------------------------------------------------------

    def ready(self) -> bool:
        """Whether the server answers ready now (never retried: this is the question)."""
        try:
            response = self._http.get("/readyz")
        except httpx.TransportError:
            return False
        return response.is_success

    def me(self) -> Me:
        return self._one(Me, "GET", "/users/me")

    def create_user(
        self,
        name: str,
        *,
        password: str | None = None,
        email: str | None = None,
        is_admin: bool = False,
    ) -> UserRead:
        body = {"name": name, "password": password, "email": email, "is_admin": is_admin}
        return self._one(UserRead, "POST", "/users", json=body)

    def list_users(self) -> list[UserRead]:
        return self._many(UserRead, "/users")

    def status(self) -> StatusRead:
        """Server version, database and blob store kinds, nodes, and your visible queue."""
        return self._one(StatusRead, "GET", "/status")

    def change_password(self, old: str, new: str) -> UserRead:
        """Change your own password; your other tokens are revoked, this client's stays."""
        body = {"old_password": old, "new_password": new}
        return self._one(UserRead, "POST", "/users/me/password", json=body)

    def reset_password(self, name: str, new: str) -> UserRead:
        """Set ``name``'s password (global admins); all of that user's tokens are revoked."""
        body = {"new_password": new}
        return self._one(UserRead, "POST", f"/users/{name}/password", json=body)

    def update_user(self, name: str, **changes: Any) -> UserRead:
        return self._one(UserRead, "PATCH", f"/users/{name}", json=changes)

    def grant(self, user: str, grant: str) -> UserRead:
        """Give ``user`` a platform-wide grant such as ``project-creator`` (global admins)."""
        return self._one(UserRead, "PUT", f"/users/{user}/grants/{grant}")

    def revoke_grant(self, user: str, grant: str) -> UserRead:
        return self._one(UserRead, "DELETE", f"/users/{user}/grants/{grant}")

    def create_token(
        self, name: str, *, expires_in_days: int | None = None, user: str | None = None
    ) -> TokenCreated:
        body = {"name": name, "expires_in_days": expires_in_days, "user": user}
        return self._one(TokenCreated, "POST", "/tokens", json=body)

    def list_tokens(self) -> list[TokenRead]:
        return self._many(TokenRead, "/tokens")

    def revoke_token(self, token_id: int) -> None:
        self._request("DELETE", f"/tokens/{token_id}")

    def login(self, user: str, password: str) -> TokenCreated:
        return self._one(
            TokenCreated, "POST", "/auth/login", json={"user": user, "password": password}
        )

    # -- projects and members ----------------------------------------------------------

    def create_project(self, name: str, description: str = "") -> ProjectRead:
        return self._one(
            ProjectRead, "POST", "/projects", json={"name": name, "description": description}
        )

    def list_projects(self) -> list[ProjectRead]:
        return self._many(ProjectRead, "/projects")

    def read_project(self, name: str) -> ProjectRead:
        return self._one(ProjectRead, "GET", f"/projects/{name}")

    def delete_project(self, name: str) -> None:
        self._request("DELETE", f"/projects/{name}")

    def add_member(self, project: str, user: str, role: str = "member") -> MemberRead:
        return self._one(
            MemberRead, "POST", f"/projects/{project}/members", json={"user": user, "role": role}
        )

    def list_members(self, project: str) -> list[MemberRead]:
        return self._many(MemberRead, f"/projects/{project}/members")

    def update_member(self, project: str, user: str, role: str) -> MemberRead:
        return self._one(
            MemberRead, "PATCH", f"/projects/{project}/members/{user}", json={"role": role}
        )

    def remove_member(self, project: str, user: str) -> None:
        self._request("DELETE", f"/projects/{project}/members/{user}")

    # -- blobs -------------------------------------------------------------------------

    def upload_blob(
        self,
        project: str,
        data: bytes | IO[bytes] | Iterable[bytes] | Path,
        *,
        name: str = "",
        media_type: str = "application/octet-stream",
        digest: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> BlobRead:
        """Stream ``data`` (bytes, a binary file, an iterable of chunks, or a path) up.

        With ``digest`` (the SHA-256 hex the content must have) the server refuses content
        that arrives with another digest, and stores nothing. ``progress``, if given, is
        called with the size in bytes of each chunk as it is handed to the connection (per
        chunk, not a running total): the calls sum to the blob's size."""
        params = {"name": name, "media_type": media_type}
        if digest is not None:
            params["digest"] = digest
        if isinstance(data, Path):
            with data.open("rb") as handle:
                return self.upload_blob(
                    project,
                    handle,
                    name=name or data.name,
                    media_type=media_type,
                    digest=digest,
                    progress=progress,
                )
        content: bytes | Iterable[bytes]
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(data, bytes):
            content = data
        elif isinstance(data, Iterable) and not hasattr(data, "read"):
            content = iter(data)
        else:
            reader = data
            # a seekable file is read again from where it was if the upload must be retried
            content = FileBody(reader, CHUNK) if _seekable(reader) else _read_chunks(reader)
            length = _remaining(reader)
            if length is not None:  # a plain body is cheaper for the server than chunked
                headers["Content-Length"] = str(length)
        if progress is not None:
            content = _reported(content, progress)
        return self._one(
            BlobRead,
            "PUT",
            f"/projects/{project}/blobs",
            params=params,
            content=content,
            headers=headers,
        )

    def upload_blobs(self, project: str, files: Sequence[tuple[str, Path]]) -> list[BlobRead]:
        """Upload many small files in one request: ``(digest, path)`` pairs, each file's
        content checked by the server against its SHA-256 ``digest``; all or nothing."""
        from underlay.data import folders

        response = self._request(
            "PUT",
            f"/projects/{project}/blobs/batch",
            content=folders.frames(files),
            headers={"Content-Type": "application/octet-stream"},
        )
        return TypeAdapter(list[BlobRead]).validate_python(response.json())

    def list_blobs(self, project: str, *, limit: int = 100, offset: int = 0) -> list[BlobRead]:
        return self._many(
            BlobRead, f"/projects/{project}/blobs", params={"limit": limit, "offset": offset}
        )

    def read_blob(self, project: str, digest: str) -> BlobRead:
        return self._one(BlobRead, "GET", f"/projects/{project}/blobs/{digest}")

    def iter_blob(
        self, project: str, digest: str, *, progress: Callable[[int], None] | None = None
    ) -> Iterator[bytes]:
        """Stream a blob's bytes, checking the SHA-256 end to end. ``digest`` may carry the
        ``sha256:`` prefix or be a unique short prefix; the server names the full digest.

        ``progress``, if given, is called with the size in bytes of each chunk as it arrives
        (per chunk, as for :meth:`upload_blob`)."""
        path = f"/projects/{project}/blobs/{digest}/content"
        ref = digest.removeprefix("sha256:")
        what = f"blob sha256:{ref} of project {project!r}"
        chunks = self._iter_verified(path, what, ref if len(ref) == 64 else None, prefix=ref)
        return chunks if progress is None else _reported(chunks, progress)

    def _iter_verified(
        self, path: str, what: str, digest: str | None = None, *, prefix: str = ""
    ) -> Iterator[bytes]:
        """Stream ``path``'s bytes and check their SHA-256 against ``digest`` (else against the
        server's ``X-Content-SHA256``, which must start with ``prefix``); a server that cannot
        be reached is ``Unavailable``."""
        hasher = hashlib.sha256()
        response = self._send("GET", path, stream=True)  # retried until the first byte
        try:
            with contextlib.closing(response):
                _raise_for_problem(response)
                expected = digest or response.headers.get("X-Content-SHA256", "")
                if not expected.startswith(prefix):
                    raise IntegrityFailure(f"{what} arrived as another blob ({expected})")
                for chunk in response.iter_bytes(CHUNK):
                    hasher.update(chunk)
                    yield chunk
        except httpx.TransportError as exc:
            raise IntegrityFailure(f"{what} could not be read in full: {exc}") from exc
        if hasher.hexdigest() != expected:
            raise IntegrityFailure(f"{what} arrived with another digest")

    def _verified_download(self, path: str, what: str) -> bytes:
        return b"".join(self._iter_verified(path, what))

    def download_blob(
        self, project: str, digest: str, *, progress: Callable[[int], None] | None = None
    ) -> bytes:
        """A blob's bytes; ``progress`` as for :meth:`iter_blob`."""
        return b"".join(self.iter_blob(project, digest, progress=progress))

    def delete_blob(self, project: str, digest: str) -> None:
        self._request("DELETE", f"/projects/{project}/blobs/{digest}")

    # -- lineage and audit -------------------------------------------------------------

    def add_lineage(
        self, project: str, src: tuple[str, str], relation: str, dst: tuple[str, str]
    ) -> None:
        body = {
            "src": {"kind": src[0], "id": src[1]},
            "relation": relation,
            "dst": {"kind": dst[0], "id": dst[1]},
        }
        self._request("POST", f"/projects/{project}/lineage", json=body)

    def lineage(
        self,
        project: str,
        kind: str,
        object_id: str,
        *,
        direction: str = "both",
        depth: int | None = None,
    ) -> LineageGraphRead:
        params: dict[str, Any] = {"direction": direction}
        if depth is not None:
            params["depth"] = depth
        return self._one(
            LineageGraphRead,
            "GET",
            f"/projects/{project}/lineage/{kind}/{object_id}",
            params=params,
        )

    def list_audit(self, **filters: Any) -> list[AuditEntryRead]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self._many(AuditEntryRead, "/audit", params=params)

    def verify_audit(self) -> AuditReportRead:
        return self._one(AuditReportRead, "GET", "/audit/verify")


def _reported(chunks: bytes | Iterable[bytes], progress: Callable[[int], None]) -> Iterator[bytes]:
    """``chunks`` unchanged, calling ``progress`` with each one's size as it passes."""
    if isinstance(chunks, bytes):
        chunks = [chunks[i : i + CHUNK] for i in range(0, len(chunks), CHUNK)]
    for chunk in chunks:
        progress(len(chunk))
        yield chunk


def _seekable(reader: Any) -> bool:
    try:
        return bool(reader.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _read_chunks(reader: Any) -> Iterator[bytes]:
    return iter(lambda: reader.read(CHUNK), b"")


def _remaining(reader: Any) -> int | None:
    """How many bytes a regular file has left from its position; None for anything else."""
    try:
        info = os.fstat(reader.fileno())
        return info.st_size - reader.tell() if stat.S_ISREG(info.st_mode) else None
    except (AttributeError, OSError, ValueError):  # not a real file (BytesIO, a pipe)
        return None
