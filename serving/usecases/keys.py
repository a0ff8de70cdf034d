"""API keys: authenticate a request (refusals recorded), create, list and revoke keys."""

from __future__ import annotations

from typing import Any

from fastapi.concurrency import run_in_threadpool

from cluster.access import Action, ApiKey, Caller, Role, authorize
from serving.usecases.audited import audited, clipped
from serving.usecases.context import Context


def _claimed_key(token: str | None) -> str | None:
    """The key id a token claims to be (before the secret), for the record of a refused one."""
    if not token:
        return None
    return clipped(token.partition("_")[2].partition(".")[0], 32) or None


async def authenticate(ctx: Context, token: str | None, client: str, method: str, route: str) -> Caller:
    """The caller behind a token. A missing, malformed, unknown or revoked key is refused and recorded (so is a
    check that could not read the keys): every refusal is counted, whoever sends it; accepted keys are not
    recorded here, the action they go on to is."""
    try:
        if ctx.keys.fresh():
            key = ctx.keys.authenticate(token)  # no I/O: the keys were read under a second ago
        else:
            key = await run_in_threadpool(ctx.keys.authenticate, token)
    except Exception as exc:
        fields = {"method": method, "route": route, "claimed_key": _claimed_key(token), "from": client}
        async with audited(ctx, None, "authenticate", None, **fields):
            raise exc from None
    return key.caller(client)


async def create(
    ctx: Context, caller: Caller, role: Role, collections: list[str] | None, label: str
) -> tuple[ApiKey, str]:
    async with audited(ctx, caller, "key-create", None, key_role=str(role), grants=collections or ["*"]) as entry:
        authorize(caller, Action.KEYS_WRITE)
        key, token = ctx.keys.create(role, collections, label)
        entry["key"] = key.key_id
    return key, token


def listed(ctx: Context, caller: Caller) -> list[dict[str, Any]]:
    authorize(caller, Action.KEYS_WRITE)
    return [k.public() for k in ctx.keys.keys(max_age_s=0.0)]


async def revoke(ctx: Context, caller: Caller, key_id: str) -> ApiKey:
    async with audited(ctx, caller, "key-revoke", None, key=key_id):
        authorize(caller, Action.KEYS_WRITE)
        return ctx.keys.revoke(key_id)


async def bootstrap(ctx: Context, caller: Caller) -> str | None:
    """On a store with no keys, the first admin key's token (printed once by `facegrid serve`)."""
    if ctx.keys.keys():
        return None
    return (await create(ctx, caller, Role.ADMIN, None, "bootstrap admin"))[1]
