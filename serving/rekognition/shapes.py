"""Rekognition's operations and shapes from botocore's own service model, and the checks a server must make that
clients leave out: required members, types, lengths, ranges, patterns and enums, member by member."""

from __future__ import annotations

import base64
import binascii
import re
from functools import cache
from typing import Any

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape

from cluster.text import is_finite_number

OPERATIONS = (
    "CreateCollection",
    "DescribeCollection",
    "ListCollections",
    "DeleteCollection",
    "IndexFaces",
    "ListFaces",
    "DeleteFaces",
    "SearchFaces",
    "SearchFacesByImage",
    "CompareFaces",
    "DetectFaces",
    "CreateUser",
    "DeleteUser",
    "ListUsers",
    "AssociateFaces",
    "DisassociateFaces",
    "SearchUsers",
    "SearchUsersByImage",
)


class InvalidParameter(ValueError):
    """A request that does not fit the operation's input shape."""


@cache
def service() -> ServiceModel:
    return botocore.session.get_session().get_service_model("rekognition")


def operation(name: str) -> OperationModel:
    return service().operation_model(name)


def checked(name: str, params: Any) -> dict[str, Any]:
    """The operation's input, validated against its shape (blobs decoded from base64)."""
    shape = operation(name).input_shape
    if shape is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidParameter("the request body must be a JSON object")
    return dict(_check(shape, params, name))


def _check(shape: Shape, value: Any, path: str) -> Any:
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            raise InvalidParameter(f"{path} must be an object")
        unknown = set(value) - set(shape.members)
        if unknown:
            raise InvalidParameter(f"{path} has unknown member(s) {sorted(unknown)}")
        for member in shape.required_members:
            if member not in value:
                raise InvalidParameter(f"{path}.{member} is required")
        return {k: _check(shape.members[k], v, f"{path}.{k}") for k, v in value.items()}
    if kind == "list":
        if not isinstance(value, list):
            raise InvalidParameter(f"{path} must be a list")
        _bounds(shape, len(value), path, "items")
        return [_check(shape.member, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "string":
        if not isinstance(value, str):
            raise InvalidParameter(f"{path} must be a string")
        _bounds(shape, len(value), path, "characters")
        if shape.enum and value not in shape.enum:
            raise InvalidParameter(f"{path} must be one of {shape.enum}")
        pattern = shape.metadata.get("pattern")
        if pattern and not re.fullmatch(pattern, value):
            raise InvalidParameter(f"{path} must match {pattern}")
        return value
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParameter(f"{path} must be an integer")
        _bounds(shape, value, path, "")
        return value
    if kind in ("float", "double"):
        if not is_finite_number(value):
            raise InvalidParameter(f"{path} must be a finite number")
        _bounds(shape, value, path, "")
        return float(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise InvalidParameter(f"{path} must be true or false")
        return value
    if kind == "blob":
        if not isinstance(value, str):
            raise InvalidParameter(f"{path} must be base64 text")
        try:
            blob = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidParameter(f"{path} is not valid base64") from exc
        _bounds(shape, len(blob), path, "bytes")
        return blob
    if kind == "map":
        if not isinstance(value, dict):
            raise InvalidParameter(f"{path} must be an object")
        return {_check(shape.key, k, f"{path} key"): _check(shape.value, v, f"{path}.{k}") for k, v in value.items()}
    return value


def _bounds(shape: Shape, size: float, path: str, unit: str) -> None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    what = f" {unit}" if unit else ""
    if low is not None and size < low:
        raise InvalidParameter(f"{path} must be at least {low}{what}")
    if high is not None and size > high:
        raise InvalidParameter(f"{path} must be at most {high}{what}")
