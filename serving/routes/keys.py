"""API keys, for admins: create (the token is shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter

from cluster.errors import InvalidRequest
from cluster.keys.access import Role
from serving.deps import CallerDep, Ctx, errors
from serving.schemas_admin import CreateKey, KeyCreated, KeyInfo, KeyList
from serving.usecases import keys

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201, responses=errors())
async def create(body: CreateKey, ctx: Ctx, caller: CallerDep) -> KeyCreated:
    try:
        role = Role(body.role)
    except ValueError:
        raise InvalidRequest(f"role must be one of {[r.value for r in Role]}") from None
    key, token = await keys.create(ctx, caller, role, body.collections, body.label)
    return KeyCreated.model_validate({**key.public(), "token": token})


@router.get("", responses=errors())
def list_all(ctx: Ctx, caller: CallerDep) -> KeyList:
    return KeyList.model_validate({"keys": keys.listed(ctx, caller)})


@router.delete("/{key_id}", responses=errors(404))
async def revoke(key_id: str, ctx: Ctx, caller: CallerDep) -> KeyInfo:
    return KeyInfo.model_validate((await keys.revoke(ctx, caller, key_id)).public())
