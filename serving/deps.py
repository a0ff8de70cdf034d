"""Dependencies shared by the routes: the context, the authenticated caller, uploads within limits, and the error
statuses each route declares."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.datastructures import UploadFile as StarletteUpload

from cluster.collections.index_spec import SearchKnobs
from cluster.keys.access import Caller, Role
from cluster.pipeline.errors import ImageError, Reason
from serving import stages
from serving.schemas import ErrorEnvelope, SearchOptions
from serving.usecases import keys
from serving.usecases.context import Context
from serving.usecases.policy import SearchRequest


def get_context(request: Request) -> Context:
    ctx: Context = request.app.state.context
    return ctx


Ctx = Annotated[Context, Depends(get_context)]

# The two ways to present a key, declared as OpenAPI security schemes (not as header parameters, which clients
# and schema-driven tools would fill like any other field).
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key: fgk_<id>.<secret>")
BEARER = HTTPBearer(auto_error=False, description="The same key as a bearer token")


async def get_caller(
    request: Request,
    ctx: Ctx,
    x_api_key: Annotated[str | None, Depends(API_KEY)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> Caller:
    stages.mark("http_in")  # the request read and parsed, up to its caller
    client = request.client.host if request.client else ""
    if not ctx.accountable:
        return Caller(key_id="accountability-off", role=Role.ADMIN, client=client)
    token = x_api_key if x_api_key is not None else (bearer.credentials if bearer else None)
    route = getattr(request.scope.get("route"), "path", request.url.path)
    caller = await keys.authenticate(ctx, token, client, request.method, route)
    stages.mark("auth")
    request.state.caller = caller  # for the audit of a request whose fields then fail validation (app.py)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


async def read_upload(upload: StarletteUpload, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ImageError(Reason.IMAGE_TOO_LARGE, f"upload over {limit} bytes")
    return data


ERROR_MEANINGS = {
    400: "Invalid request (INVALID_REQUEST, PURPOSE_REQUIRED, ...)",
    401: "No valid API key (NOT_AUTHENTICATED)",
    403: "The key's role or grants do not allow it, or a threshold below the floor (FORBIDDEN, THRESHOLD_BELOW_FLOOR)",
    404: "No such collection (COLLECTION_NOT_FOUND)",
    409: "Conflict (COLLECTION_EXISTS, COLLECTION_CHANGED, MODEL_MISMATCH)",
    413: "Upload too large (IMAGE_TOO_LARGE)",
    422: "Unusable input (a field that fails validation, an image that cannot be read, no face in the probe)",
    500: "An unexpected error (INTERNAL_ERROR)",
    502: "The object store failed (STORAGE_ERROR, STORAGE_AUTH_FAILED)",
    503: "The cluster could not answer (SHARDS_UNAVAILABLE, CLUSTER_UNAVAILABLE)",
    504: "The cluster did not answer in time (TIMEOUT)",
}
# Every authenticated route can answer these.
COMMON = (400, 401, 403, 422, 500, 502, 503, 504)


def errors(*extra: int, public: bool = False) -> dict[int | str, dict[str, Any]]:
    """The error statuses a route declares, each with the error envelope, for its OpenAPI operation; a public
    route (no key) cannot answer 401 or 403."""
    statuses = {*COMMON, *extra} - ({401, 403} if public else set())
    return {s: {"model": ErrorEnvelope, "description": ERROR_MEANINGS[s]} for s in sorted(statuses)}


def search_request(body: SearchOptions) -> SearchRequest:
    """The search a JSON body states (vector and face-id searches alike)."""
    knobs = SearchKnobs(body.nprobe, body.ef_search)
    return SearchRequest(body.purpose, body.case_id, body.threshold, body.max_results, knobs=knobs)


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """A response model serialised by pydantic directly: FastAPI's encoder walk cost 0.4 ms a search."""
    body = model.model_dump_json()
    stages.mark("serialize")
    return Response(body, status_code=status_code, media_type="application/json")
