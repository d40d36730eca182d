"""Request dependencies: the platform, the authenticated actor, and the request context."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from underlay.errors import Unauthenticated
from underlay.identity import Actor, authenticate
from underlay.platform import Platform, Unit
from underlay.store import Scope

_bearer = HTTPBearer(auto_error=False, description="An underlay API token.")


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


@dataclass
class RequestContext:
    platform: Platform
    actor: Actor
    client: str

    @contextlib.contextmanager
    def unit(
        self,
        action: str,
        resource: str,
        *,
        project: str | None = None,
        audited: bool = True,
        scope: Scope | None = None,
    ) -> Iterator[Unit]:
        with self.platform.unit(
            self.actor,
            action,
            resource,
            project=project,
            client=self.client,
            audited=audited,
            scope=scope,
        ) as unit:
            yield unit


def current_actor(
    request: Request,
    platform: Annotated[Platform, Depends(get_platform)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    secret = credentials.credentials if credentials else None
    try:
        with platform.db.session(Scope.everything()) as session:
            return authenticate(session, secret)
    except Unauthenticated as exc:
        platform.record_denied(
            f"{request.method} {request.url.path}",
            request.url.path,
            client_address(request),
            exc,
        )
        raise


def request_context(
    request: Request,
    platform: Annotated[Platform, Depends(get_platform)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> RequestContext:
    return RequestContext(platform, actor, client_address(request))


Ctx = Annotated[RequestContext, Depends(request_context)]
PlatformDep = Annotated[Platform, Depends(get_platform)]
