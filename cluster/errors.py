"""Errors a user can cause, each with a stable code; the API maps them to HTTP statuses, the CLI to messages."""

from __future__ import annotations


class FacegridError(Exception):
    code = "FACEGRID_ERROR"
    status = 400

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(FacegridError):
    code = "INVALID_REQUEST"


class CollectionNotFound(FacegridError):
    code = "COLLECTION_NOT_FOUND"
    status = 404


class CollectionExists(FacegridError):
    code = "COLLECTION_EXISTS"
    status = 409


class CollectionChanged(FacegridError):
    """Another publish landed while this one was being built; nothing of this one was made visible."""

    code = "COLLECTION_CHANGED"
    status = 409


class FaceNotFound(FacegridError):
    code = "FACE_NOT_FOUND"
    status = 404


class PhotoNotKept(FaceNotFound):
    """A face added by upload whose photo is not in the store: its collection keeps no photos, or the photo went
    with an erasure (cluster/collections/photos.py)."""

    code = "PHOTO_NOT_KEPT"


class SourceObjectNotFound(FacegridError):
    code = "OBJECT_NOT_FOUND"
    status = 404


class InvalidCollectionName(FacegridError):
    code = "INVALID_COLLECTION_NAME"


class NoFaceInProbe(FacegridError):
    code = "NO_FACE_IN_PROBE"
    status = 422


class ThresholdBelowFloor(FacegridError):
    code = "THRESHOLD_BELOW_FLOOR"
    status = 403


class ModelMismatch(FacegridError):
    code = "MODEL_MISMATCH"
    status = 409


class RateNotSupported(FacegridError):
    """A false match rate smaller than the calibration can tell apart: promising it would be a guess."""

    code = "RATE_NOT_SUPPORTED"
    status = 422


class PromiseNotSupported(FacegridError):
    """A search of more faces than the collection's per-search promise can be kept for: the false match rate
    per comparison it would need is finer than the calibration's tail states. Not answered at a weaker one."""

    code = "PROMISE_NOT_SUPPORTED"
    status = 409


class UserHasNoFaces(FacegridError):
    """A search by a user who has no faces yet: nothing to search with."""

    code = "USER_HAS_NO_FACES"
    status = 409


class InvalidCalibration(FacegridError):
    """A calibration of the right shape whose rows do not make one: rates must fall as similarity rises."""

    code = "INVALID_CALIBRATION"
    status = 422


class PurposeRefused(FacegridError):
    """No purpose, one the deployment does not allow, or no case id: the search is refused before any work."""

    code = "PURPOSE_REQUIRED"  # the stable code, kept since the first release


# Codes that mean "the system refused this search" (counted as refusals in the transparency report).
REFUSAL_CODES = frozenset(
    {
        "NOT_AUTHENTICATED",
        "FORBIDDEN",
        "PURPOSE_REQUIRED",
        "THRESHOLD_BELOW_FLOOR",
        # The Rekognition protocol's credentials and signatures (cluster/keys/credentials.py, serving/rekognition/).
        "UNRECOGNIZED_CLIENT",
        "EXPIRED_TOKEN",
        "INVALID_SIGNATURE",
        # Input the system would not act on (a NaN threshold, a string over its cap) and a full work queue.
        "INVALID_REQUEST",
        "TOO_MANY_REQUESTS",
        # A console form posted from another site, or without its session's token (serving/console/web.py).
        "CSRF_REFUSED",
        # Requests of the right shape the system will not act on: a rate finer than the calibration resolves, a
        # collection too large for its per-search promise, a calibration whose rows do not make one, another model's
        # vector or calibration, a user with no faces.
        "RATE_NOT_SUPPORTED",
        "PROMISE_NOT_SUPPORTED",
        "INVALID_CALIBRATION",
        "MODEL_MISMATCH",
        "USER_HAS_NO_FACES",
    }
)


class Busy(FacegridError):
    """The server's bounded work queue is full: retry after `retry_after_s` (also the Retry-After header)."""

    code = "TOO_MANY_REQUESTS"
    status = 429


class IndexIncomplete(FacegridError):
    """An index job ended with objects it could not read: what it read is published, the rest needs a re-run."""

    code = "INDEX_INCOMPLETE"
    status = 503


class DashboardUnreachable(FacegridError):
    """The Ray dashboard (Job Submission API) named by --address did not answer, or refused the request."""

    code = "CLUSTER_UNAVAILABLE"
    status = 503


class ShardsUnavailable(FacegridError):
    """No shard of the collection answered: an empty answer would look like "no match", so none is given."""

    code = "SHARDS_UNAVAILABLE"
    status = 503


class AuditUnavailable(FacegridError):
    """The audit log cannot be appended to (its head is damaged or its end was removed): audited actions fail
    closed until an admin repairs it (`facegrid audit repair`), which keeps the damaged part for inspection."""

    code = "AUDIT_UNAVAILABLE"
    status = 503


class CsrfRefused(FacegridError):
    """A console form that did not come from the console's own pages: another origin, or no session token."""

    code = "CSRF_REFUSED"
    status = 403


class ShadowStale(FacegridError):
    """The upgraded version lacks photos the collection holds now (added since the upgrade read it, or not read)."""

    code = "SHADOW_STALE"
    status = 409


class NoShadowVersion(FacegridError):
    """No upgrade has built a version to compare with or to switch to."""

    code = "NO_SHADOW_VERSION"
    status = 409


class NoPreviousVersion(FacegridError):
    """Nothing to roll back to: no cut-over, or the version before it was kept past its time and removed."""

    code = "NO_PREVIOUS_VERSION"
    status = 409


class SameRecipe(FacegridError):
    """An upgrade to the recipe the collection already uses."""

    code = "SAME_RECIPE"
    status = 409
