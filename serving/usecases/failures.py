"""What any exception means to a user: HTTP status, stable code, message; the same for the API, CLI and audit."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ray.exceptions import RayError, RayTaskError

from cluster.errors import REFUSAL_CODES, FacegridError
from cluster.pipeline.errors import ImageError, Reason
from cluster.storage import StorageAuthError, StorageError

IMAGE_STATUS = {Reason.IMAGE_TOO_LARGE: 413}


@dataclass(frozen=True)
class Failure:
    status: int
    code: str
    message: str
    details: dict[str, object] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        """How the audit counts it: the system said no (`refused`), or it could not do what was asked (`error`)."""
        return "refused" if self.code in REFUSAL_CODES else "error"


def unwrap(exc: BaseException) -> BaseException:
    """The error raised inside a Ray task or actor call, rather than Ray's wrapper around it."""
    while isinstance(exc, RayTaskError) and exc.cause is not None:
        exc = exc.cause
    return exc


def plain(exc: BaseException, limit: int = 300) -> str:
    """An error's first line, capped: what a client may read, never a traceback from a worker process."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    return first if len(first) <= limit else first[:limit] + "..."


def failure(exc: BaseException) -> Failure:
    exc = unwrap(exc)
    if isinstance(exc, FacegridError):
        return Failure(exc.status, exc.code, exc.message, dict(exc.details))
    if isinstance(exc, ImageError):
        return Failure(IMAGE_STATUS.get(exc.reason, 422), str(exc.reason), exc.message)
    if isinstance(exc, StorageAuthError):
        return Failure(502, "STORAGE_AUTH_FAILED", plain(exc))
    if isinstance(exc, StorageError):
        return Failure(502, "STORAGE_ERROR", plain(exc))
    if isinstance(exc, RayError):
        return Failure(503, "CLUSTER_UNAVAILABLE", f"the Ray cluster failed this request: {type(exc).__name__}")
    if isinstance(exc, asyncio.CancelledError):
        return Failure(499, "CANCELLED", "the request was cancelled before it finished")
    if isinstance(exc, TimeoutError):
        return Failure(504, "TIMEOUT", "the cluster did not answer in time")
    return Failure(500, "INTERNAL_ERROR", f"an unexpected {type(exc).__name__}; the server log has the details")
