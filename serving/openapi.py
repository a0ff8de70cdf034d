"""The OpenAPI schema, made to state the rules this server enforces (so that what the schema calls valid is
accepted, and clients and schema-driven tools see every rule): the search rules its settings set, the bounds of
every search field, and forms as multipart can carry them."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from cluster.settings import ServingSettings
from cluster.text import SAFE_NON_BLANK_PATTERN
from serving.rules import MAX_CASE_ID, MAX_FACE_INDEX, MAX_KNOB, MAX_USERS

# Operations that search or compare, and so carry a purpose and a case id.
SEARCHES = (
    "/v1/collections/{collection}/search",
    "/v1/collections/{collection}/search-vector",
    "/v1/collections/{collection}/faces/{face_id}/search",
    "/v1/collections/{collection}/users/search",
    "/v1/compare",
)
# IndexFaces: a multipart upload, or JSON naming an object of the server's ingest source (where it has one).
ADD_FACES = "/v1/collections/{collection}/faces"
# Operations that set a collection's shard count.
RESHARDS = ("/v1/collections", "/v1/collections/{collection}/rebuild")
# Operations whose body names exactly one of these fields.
EXACTLY_ONE = {"/v1/collections/{collection}/users/search": ("face_id", "user_id", "image")}


def search_fields(serving: ServingSettings) -> dict[str, dict[str, Any]]:
    """The bounds the search checks apply (serving/usecases/policy.py), by field."""
    return {
        "purpose": {"type": "string", "enum": list(serving.purposes)},
        "case_id": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_CASE_ID,
            "pattern": SAFE_NON_BLANK_PATTERN,
        },
        "threshold": {"type": "number", "minimum": -1.0, "maximum": 1.0},
        "max_results": {"type": "integer", "minimum": 1, "maximum": serving.max_results},
        "max_faces": {"type": "integer", "minimum": 1},
        "face_index": {"type": "integer", "minimum": 0, "maximum": MAX_FACE_INDEX},
        "nprobe": {"type": "integer", "minimum": 1, "maximum": MAX_KNOB},
        "ef_search": {"type": "integer", "minimum": 1, "maximum": MAX_KNOB},
        "max_users": {"type": "integer", "minimum": 1, "maximum": MAX_USERS},
    }


def install(app: FastAPI, serving: ServingSettings, accountable: bool) -> None:
    """Serve the stated schema at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            app.openapi_schema = stated(schema, serving, accountable)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def stated(schema: dict[str, Any], serving: ServingSettings, accountable: bool) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    components = schema.get("components", {}).get("schemas", {})
    fields = search_fields(serving)
    if not serving.ingest_source:  # no source to name objects of: the photo must be uploaded
        schema["paths"][ADD_FACES]["post"]["requestBody"]["content"].pop("application/json", None)
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            for media, content in operation.get("requestBody", {}).get("content", {}).items():
                body = _resolve(content["schema"], components)
                if media == "multipart/form-data":
                    _as_form(body)
                if path in SEARCHES:
                    _search_rules(body, fields, accountable)
                if path in EXACTLY_ONE:  # (an empty form field is no field)
                    named = EXACTLY_ONE[path]
                    body["oneOf"] = [{"required": [n], "properties": {n: {"minLength": 1}}} for n in named]
                if path in RESHARDS:
                    body["properties"]["shards"]["maximum"] = serving.max_shards
                if body.get("required") or "oneOf" in body:  # a body with required fields is itself required
                    operation["requestBody"]["required"] = True
    return schema


def _resolve(ref: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """A body's schema, by reference or inline; changed in place, so it is copied first when shared."""
    if "$ref" not in ref:
        return ref
    name = ref["$ref"].rsplit("/", 1)[-1]
    components[name] = copy.deepcopy(components[name])
    return components[name]


def _as_form(body: dict[str, Any]) -> None:
    """Multipart has no null: an optional field is left out, never sent as `null`. A file is at least one byte
    (an empty one is refused as EMPTY_OBJECT)."""
    for prop in body.get("properties", {}).values():
        kinds = prop.get("anyOf")
        if kinds and any(kind.get("type") == "null" for kind in kinds):
            rest = [kind for kind in kinds if kind.get("type") != "null"]
            outer = {k: v for k, v in prop.items() if k != "anyOf"}  # the field's own rules win over its type's
            prop.clear()
            prop.update({**(rest[0] if len(rest) == 1 else {"anyOf": rest}), **outer})
        if prop.get("format") == "binary" or prop.get("contentMediaType") == "application/octet-stream":
            prop["minLength"] = 1


def _search_rules(body: dict[str, Any], fields: dict[str, dict[str, Any]], accountable: bool) -> None:
    properties = body.get("properties", {})
    for name, rule in fields.items():
        if name in properties:
            kept = ("title", "description") if name in ("purpose", "case_id") else ("title", "description", "default")
            properties[name] = {**{k: v for k, v in properties[name].items() if k in kept}, **rule}
    if accountable and "purpose" in properties:
        body["required"] = sorted({*body.get("required", []), "purpose", "case_id"})
