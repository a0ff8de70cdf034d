"""API keys: authenticate a request (refusals recorded), create, list and revoke keys."""

from __future__ import annotations

from typing import Any

from fastapi.concurrency import run_in_threadpool

from cluster.collections.manifest import NAME
from cluster.errors import InvalidRequest
from cluster.keys.access import Action, ApiKey, Caller, Role, authorize
from cluster.keys.credentials import Credential
from cluster.text import check_text
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


def check_grants(collections: list[str] | None) -> None:
    """Grants name collections (which need not exist yet): a name no collection can have is a mistake."""
    wrong = next((name for name in collections or [] if not NAME.fullmatch(name)), None)
    if wrong is not None:
        raise InvalidRequest(f"grant {clipped(wrong, 64)!r} is not a collection name")


async def create(
    ctx: Context, caller: Caller, role: Role, collections: list[str] | None, label: str
) -> tuple[ApiKey, str]:
    async with audited(ctx, caller, "key-create", None, key_role=str(role), grants=collections or ["*"]) as entry:
        authorize(caller, Action.KEYS_WRITE)
        check_text(label, "label")
        check_grants(collections)
        key, token = await ctx.in_thread(ctx.keys.create, role, collections, label)
        entry["key"] = key.key_id
    return key, token


async def create_protocol_credential(
    ctx: Context, caller: Caller, role: Role, collections: list[str] | None, label: str, purpose: str
) -> tuple[ApiKey, Credential, str]:
    """A facegrid key with Rekognition-protocol credentials bound to one purpose: (key, credential, secret)."""
    fields = {"key_role": str(role), "grants": collections or ["*"], "protocol": "rekognition", "purpose": purpose}
    async with audited(ctx, caller, "key-create", None, **fields) as entry:
        authorize(caller, Action.KEYS_WRITE)
        if purpose not in ctx.settings.serving.purposes:
            raise InvalidRequest(f"purpose {clipped(purpose, 64)!r} is not one of {ctx.settings.serving.purposes}")
        check_grants(collections)
        key, _token = await ctx.in_thread(ctx.keys.create, role, collections, label)
        credential, secret = await ctx.in_thread(ctx.credentials.create, key.key_id, purpose)
        entry.update(key=key.key_id, access_key_id=credential.access_key_id)
    return key, credential, secret


async def session(
    ctx: Context, caller: Caller, access_key_id: str, purpose: str | None, case_id: str, ttl_s: int
) -> dict[str, object]:
    """Session credentials carrying one case id (the purpose is the parent credential's)."""
    fields = {"access_key_id": clipped(access_key_id, 32), "case_id": clipped(case_id, 256), "ttl_s": ttl_s}
    async with audited(ctx, caller, "key-session", None, **fields) as entry:
        authorize(caller, Action.KEYS_WRITE)
        minted = await ctx.in_thread(ctx.credentials.session, access_key_id, case_id, ttl_s)
        if purpose is not None and purpose != minted["Purpose"]:
            raise InvalidRequest(
                f"access key {access_key_id} is bound to purpose {minted['Purpose']!r}, not {purpose!r}"
            )
        entry.update(session_key_id=minted["AccessKeyId"], purpose=minted["Purpose"], expires=minted["Expiration"])
    return minted


def listed(ctx: Context, caller: Caller) -> list[dict[str, Any]]:
    authorize(caller, Action.KEYS_WRITE)
    return [k.public() for k in ctx.keys.keys(max_age_s=0.0)]


async def revoke(ctx: Context, caller: Caller, key_id: str) -> ApiKey:
    async with audited(ctx, caller, "key-revoke", None, key=key_id):
        authorize(caller, Action.KEYS_WRITE)
        revoked = await ctx.in_thread(ctx.keys.revoke, key_id)
        await ctx.in_thread(ctx.credentials.revoke_for_key, key_id)
        return revoked


async def bootstrap(ctx: Context, caller: Caller) -> str | None:
    """On a store with no keys, the first admin key's token (printed once by `facegrid serve`)."""
    if await ctx.in_thread(ctx.keys.keys):
        return None
    return (await create(ctx, caller, Role.ADMIN, None, "bootstrap admin"))[1]
