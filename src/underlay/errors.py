"""The error tree shared by every layer, the server and the client.

Errors are grouped by what the caller can do about them::

    UnderlayError
     ├── InvalidInput        400  fix the request (wrong type, bad name, unknown option)
     │    └── PayloadTooLarge 413  send less
     ├── Unauthenticated     401  present a valid, unexpired, unrevoked token
     ├── PermissionDenied    403  ask an admin for a role that allows the action
     ├── NotFound            404  the object does not exist or is not visible to the caller
     ├── Conflict            409  the object exists already or changed meanwhile
     ├── RateLimited         429  wait ``retry_after`` seconds
     └── Unavailable         503  try later, or ask an operator
          └── IntegrityFailure 503  stored data failed verification; restore it

One table (:data:`PROBLEM_TYPES`) maps each class to its HTTP status and RFC 9457 problem
type; the API renders errors with it and the client maps responses back to the same classes.
"""

from __future__ import annotations

from typing import Any, ClassVar


class UnderlayError(Exception):
    """Root of every error underlay raises on purpose."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "error"
    title: ClassVar[str] = "Platform error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def __str__(self) -> str:
        return self.message


class InvalidInput(UnderlayError):
    status = 400
    slug = "invalid-input"
    title = "Invalid input"


class PayloadTooLarge(InvalidInput):
    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class Unauthenticated(UnderlayError):
    status = 401
    slug = "unauthenticated"
    title = "Not authenticated"


class PermissionDenied(UnderlayError):
    status = 403
    slug = "permission-denied"
    title = "Permission denied"


class NotFound(UnderlayError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(UnderlayError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class RateLimited(UnderlayError):
    status = 429
    slug = "rate-limited"
    title = "Too many requests"

    def __init__(self, message: str, retry_after: int = 60, **extra: Any) -> None:
        super().__init__(message, retry_after=retry_after, **extra)
        self.retry_after = retry_after


class Unavailable(UnderlayError):
    status = 503
    slug = "unavailable"
    title = "Unavailable"


class IntegrityFailure(Unavailable):
    slug = "integrity-failure"
    title = "Stored data failed verification"


PROBLEM_BASE = "urn:underlay:problem:"

PROBLEM_TYPES: dict[str, type[UnderlayError]] = {
    cls.slug: cls
    for cls in (
        UnderlayError,
        InvalidInput,
        PayloadTooLarge,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        Conflict,
        RateLimited,
        Unavailable,
        IntegrityFailure,
    )
}


def problem_type(error: type[UnderlayError]) -> str:
    return PROBLEM_BASE + error.slug


def error_for_problem(type_uri: str, status: int) -> type[UnderlayError]:
    """The error class for a problem ``type`` URI, falling back on the status code."""
    slug = type_uri.removeprefix(PROBLEM_BASE)
    if slug in PROBLEM_TYPES:
        return PROBLEM_TYPES[slug]
    for cls in PROBLEM_TYPES.values():
        if cls.status == status and cls.__bases__[0] is UnderlayError:
            return cls
    return InvalidInput if 400 <= status < 500 else UnderlayError
