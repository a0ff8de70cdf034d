"""Typed errors for bad input, each with a stable reason code that error records and API responses carry."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    EMPTY_OBJECT = "EMPTY_OBJECT"
    CORRUPT_IMAGE = "CORRUPT_IMAGE"
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    IMAGE_TOO_SMALL = "IMAGE_TOO_SMALL"
    READ_FAILED = "READ_FAILED"
    NO_FACE = "NO_FACE"


class ImageError(Exception):
    """An input that cannot become face records; `reason` is stable, `message` is for people."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
