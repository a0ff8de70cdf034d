"""Our errors as the exceptions Rekognition's clients model (botocore turns `__type` into the exception class),
with the message a person can act on."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import Response

from serving.rekognition.shapes import InvalidParameter
from serving.rekognition.signing import SignatureProblem
from serving.rekognition.similarity import of_rate
from serving.usecases.failures import failure

BY_CODE = {
    "COLLECTION_NOT_FOUND": "ResourceNotFoundException",
    "USER_NOT_FOUND": "ResourceNotFoundException",
    "FACE_NOT_FOUND": "ResourceNotFoundException",
    "COLLECTION_EXISTS": "ResourceAlreadyExistsException",
    "USER_EXISTS": "ConflictException",
    "UNSUPPORTED_FORMAT": "InvalidImageFormatException",
    "CORRUPT_IMAGE": "InvalidImageFormatException",
    "EMPTY_OBJECT": "InvalidImageFormatException",
    "IMAGE_TOO_SMALL": "InvalidImageFormatException",
    "IMAGE_TOO_LARGE": "ImageTooLargeException",
    "OBJECT_NOT_FOUND": "InvalidS3ObjectException",
    "READ_FAILED": "InvalidS3ObjectException",
    "FORBIDDEN": "AccessDeniedException",
    "PURPOSE_REQUIRED": "AccessDeniedException",
    "NOT_AUTHENTICATED": "UnrecognizedClientException",
    "UNRECOGNIZED_CLIENT": "UnrecognizedClientException",
    "EXPIRED_TOKEN": "ExpiredTokenException",
    # Transient: clients retry these.
    "SHARDS_UNAVAILABLE": "ThrottlingException",
    "CLUSTER_UNAVAILABLE": "ThrottlingException",
    "COLLECTION_CHANGED": "ThrottlingException",
    "TIMEOUT": "ThrottlingException",
    "TOO_MANY_REQUESTS": "ThrottlingException",
    "INDEX_INCOMPLETE": "ThrottlingException",
    "STORAGE_ERROR": "InternalServerError",
    "STORAGE_AUTH_FAILED": "InternalServerError",
    "INTERNAL_ERROR": "InternalServerError",
}
SESSION_HINT = (
    " This protocol carries the case id in session credentials: mint them with "
    "`facegrid keys session --access-key-id AKID --case-id CASE` and sign with their session token."
)


def exception_for(exc: Exception, in_session: bool) -> tuple[str, str]:
    """(Rekognition exception name, message) for any exception a call raised."""
    if isinstance(exc, SignatureProblem):
        return exc.aws_name, exc.message
    if isinstance(exc, InvalidParameter):
        return "InvalidParameterException", str(exc)
    described = failure(exc)
    name = BY_CODE.get(described.code, "InvalidParameterException")
    message = described.message
    if described.code == "THRESHOLD_BELOW_FLOOR":
        rate = float(str(described.details.get("max_false_match_rate", 1e-5)))
        message = (
            f"the threshold is below this collection's floor: Similarity {of_rate(rate)} (at most {rate:g} false "
            f"matches per comparison); ask for {of_rate(rate)} or more"
        )
    elif described.code == "PURPOSE_REQUIRED" and not in_session:
        message += SESSION_HINT
    return name, message


def aws_error(name: str, message: str, request_id: str, record: dict[str, Any] | None = None) -> Response:
    status = 500 if name == "InternalServerError" else 400
    headers = {"x-amzn-requestid": request_id, "x-amzn-errortype": name}
    if record is not None:
        headers["x-facegrid-audit-seq"] = str(record["seq"])
    body = json.dumps({"__type": name, "Message": message})
    return Response(body, status_code=status, media_type="application/x-amz-json-1.1", headers=headers)
