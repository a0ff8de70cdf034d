"""People (users): create, list, delete; associate and disassociate faces; search for people by a face id, a
user id or a photo, each person ranked with the evidence of their faces."""

from __future__ import annotations

import hashlib

import numpy as np

from cluster.collections.people import MAX_FACES_PER_ACT, PeopleState, User, UserExists, check_face_ids, check_user_id
from cluster.errors import FaceNotFound, InvalidRequest, NoFaceInProbe, UserHasNoFaces
from cluster.keys.access import Action, Caller, authorize
from serving import render
from serving.render import LEADS_NOTICE
from serving.rules import MAX_PAGE, MAX_USERS
from serving.schemas import Match, Threshold
from serving.schemas_people import (
    AssociationChange,
    UnsuccessfulFace,
    UserDeleted,
    UserInfo,
    UserMatch,
    UserPage,
    UserSearchAnswer,
)
from serving.usecases import faces
from serving.usecases.audited import audited, clipped
from serving.usecases.context import Context
from serving.usecases.images import pick, probe_faces
from serving.usecases.policy import SearchRequest
from serving.usecases.search import face_vectors, prepare, search_vectors


def _info(user: User) -> UserInfo:
    return UserInfo(
        user_id=user.user_id,
        created_at=user.created_at,
        created_by=user.created_by,
        face_count=len(user.faces),
        face_ids=list(user.faces),
    )


async def create(ctx: Context, caller: Caller, collection: str, user_id: str) -> UserInfo:
    async with audited(ctx, caller, "create-user", collection, user_id=clipped(user_id, 140)):
        authorize(caller, Action.FACES_WRITE, collection)
        check_user_id(user_id)
        await ctx.read_manifest(collection, fresh=True)  # the collection exists
        people = ctx.people(collection)
        if user_id in (await ctx.in_thread(people.state)).users:
            raise UserExists(f"user {user_id!r} already exists in collection {collection!r}")
        await ctx.in_thread(lambda: people.write("create", user_id, caller.key_id))
        return _info(people.user(user_id, await ctx.in_thread(people.state)))


async def page(ctx: Context, caller: Caller, collection: str, limit: int, offset: int) -> UserPage:
    """A page of users with their faces: a read that is audited, with how many it showed."""
    async with audited(ctx, caller, "list-users", collection, limit=limit, offset=offset) as entry:
        authorize(caller, Action.FACES_READ, collection)
        if not 1 <= limit <= MAX_PAGE or offset < 0:
            raise InvalidRequest(f"limit must be 1-{MAX_PAGE} and offset non-negative")
        await ctx.read_manifest(collection, fresh=True)
        users = sorted((await ctx.in_thread(ctx.people(collection).state)).users.values(), key=lambda u: u.user_id)
        shown = users[offset : offset + limit]
        entry.update(users=len(shown), total=len(users))
    return UserPage(
        collection=collection,
        total=len(users),
        offset=offset,
        limit=limit,
        users=[_info(u) for u in shown],
        next_offset=offset + limit if offset + limit < len(users) else None,
    )


async def associate(
    ctx: Context, caller: Caller, collection: str, user_id: str, face_ids: list[str]
) -> AssociationChange:
    """Associate up to 100 indexed faces with a user; a face that belongs to another user stays with it."""
    async with audited(ctx, caller, "associate-faces", collection, user_id=clipped(user_id, 140)) as entry:
        authorize(caller, Action.FACES_WRITE, collection)
        wanted = check_face_ids(face_ids)
        manifest = await ctx.read_manifest(collection, fresh=True)
        people = ctx.people(collection)
        before = await ctx.in_thread(people.state)
        people.user(user_id, before)
        held = await face_vectors(ctx, manifest, wanted)
        unsuccessful = [UnsuccessfulFace(face_id=f, reason="FACE_NOT_FOUND") for f in wanted if f not in held]
        candidates = [f for f in wanted if f in held and before.owner.get(f) != user_id]
        if candidates:
            await ctx.in_thread(lambda: people.write("associate", user_id, caller.key_id, candidates))
        after = await ctx.in_thread(people.state)
        changed = [f for f in candidates if after.owner.get(f) == user_id]
        unsuccessful += [
            UnsuccessfulFace(face_id=f, reason="ASSOCIATED_TO_A_DIFFERENT_USER", user_id=after.owner.get(f))
            for f in candidates
            if after.owner.get(f) != user_id
        ]
        entry.update(face_ids=changed, unsuccessful=[u.model_dump() for u in unsuccessful])
        return AssociationChange(
            collection=collection,
            user_id=user_id,
            changed_faces=changed,
            unsuccessful=unsuccessful,
            user_faces=len(people.user(user_id, after).faces),
        )


async def disassociate(
    ctx: Context, caller: Caller, collection: str, user_id: str, face_ids: list[str]
) -> AssociationChange:
    async with audited(ctx, caller, "disassociate-faces", collection, user_id=clipped(user_id, 140)) as entry:
        authorize(caller, Action.FACES_WRITE, collection)
        wanted = check_face_ids(face_ids)
        await ctx.read_manifest(collection, fresh=True)
        people = ctx.people(collection)
        before = await ctx.in_thread(people.state)
        people.user(user_id, before)
        mine = [f for f in wanted if before.owner.get(f) == user_id]
        if mine:
            await ctx.in_thread(lambda: people.write("disassociate", user_id, caller.key_id, mine))
        unsuccessful = [
            UnsuccessfulFace(face_id=f, reason="NOT_ASSOCIATED_TO_THIS_USER", user_id=before.owner.get(f))
            for f in wanted
            if f not in mine
        ]
        after = await ctx.in_thread(people.state)
        entry.update(face_ids=mine)
        return AssociationChange(
            collection=collection,
            user_id=user_id,
            changed_faces=mine,
            unsuccessful=unsuccessful,
            user_faces=len(people.user(user_id, after).faces),
        )


async def delete(ctx: Context, caller: Caller, collection: str, user_id: str, erase_faces: bool) -> UserDeleted:
    """Delete a user (its faces stay, unassociated); with `erase_faces`, erase its faces first (real erasure,
    audited as an erasure of its own)."""
    fields = {"user_id": clipped(user_id, 140), "erase_faces": erase_faces}
    async with audited(ctx, caller, "delete-user", collection, **fields) as entry:
        authorize(caller, Action.FACES_WRITE, collection)
        people = ctx.people(collection)
        user = people.user(user_id, await ctx.in_thread(people.state))
        erased: list[str] = []
        if erase_faces and user.faces:
            erased = (await faces.erase(ctx, caller, collection, list(user.faces), [])).deleted_faces
        await ctx.in_thread(lambda: people.write("delete", user_id, caller.key_id))
        entry.update(disassociated_faces=len(user.faces), erased_faces=erased)
        return UserDeleted(
            collection=collection, user_id=user_id, disassociated_faces=list(user.faces), erased_faces=erased
        )


async def search(
    ctx: Context,
    caller: Caller,
    collection: str,
    request: SearchRequest,
    *,
    face_id: str | None = None,
    user_id: str | None = None,
    image: bytes | None = None,
    max_users: int = 10,
) -> UserSearchAnswer:
    """People most likely to be the one shown: by an indexed face, by every face of a user, or by a photo's
    largest face. Each person's similarity is the best of their faces' (calibrated per face, so the floor means
    what it means for faces); the evidence lists every face of theirs that matched above the threshold."""
    given = sum(x is not None for x in (face_id, user_id, image))
    if image is not None:
        reference = hashlib.sha256(image).hexdigest()
    else:
        reference = hashlib.sha256(f"{face_id}\0{user_id}".encode()).hexdigest()
    fields = {**request.audit_fields(reference), "face_id": clipped(face_id, 64), "user_id": clipped(user_id, 140)}
    async with audited(ctx, caller, "search-users", collection, **fields) as entry:
        manifest, limits = await prepare(ctx, caller, collection, request, entry)
        if given != 1:
            raise InvalidRequest("give exactly one of face_id, user_id or an image")
        if not 1 <= max_users <= MAX_USERS:
            raise InvalidRequest(f"max_users must be between 1 and {MAX_USERS}")
        state = await ctx.in_thread(ctx.people(collection).state)
        searched_face, leave_out, leave_user = None, set[str](), None
        if image is not None:
            probe = await probe_faces(ctx, image, None if request.face_index is not None else 1, manifest.face_recipe)
            if not probe.faces:
                raise NoFaceInProbe("no face was found in the probe image")
            face = pick(probe, request.face_index or 0).faces[0]
            assert face.embedding is not None
            searched_face = render.face_detail(face)
            queries = face.embedding[None]
        else:
            # A user's first 100 faces at most: each is a query of its own.
            user_faces = [] if face_id is not None else ctx.people(collection).user(str(user_id), state).faces
            wanted = [face_id] if face_id is not None else list(user_faces[:MAX_FACES_PER_ACT])
            if not wanted:
                raise UserHasNoFaces(f"user {user_id!r} has no faces to search with")
            found = await face_vectors(ctx, manifest, wanted)
            if face_id is not None and face_id not in found:
                raise FaceNotFound(f"face {clipped(face_id, 64)!r} is not in collection {collection!r}")
            if not found:
                raise InvalidRequest(f"none of user {user_id!r}'s faces is in the collection any more")
            queries = np.stack([found[f] for f in wanted if f in found])
            leave_out, leave_user = {*wanted, *user_faces}, user_id
        k = ctx.settings.serving.max_results
        matches, missing = await search_vectors(ctx, manifest, queries, k, limits["applied"], request.knobs)
        ranked = rank_users(state, matches, leave_out, leave_user)[:max_users]
        entry["threshold_applied"] = limits["applied"]
        entry["partial"] = bool(missing)
        # Per person, the faces shown as evidence (what a reviewer may then view and decide on).
        entry["results"] = [
            [{"face_id": m.face_id, "similarity": m.similarity, "user_id": u.user_id} for m in u.matched_faces]
            for u in ranked
        ]
        return UserSearchAnswer(
            collection=collection,
            model_id=manifest.model_id,
            user_matches=ranked,
            threshold=Threshold(**limits),
            searched_face=searched_face,
            searched_face_id=face_id,
            searched_user_id=user_id,
            collection_users=len(state.users),
            partial=bool(missing),
            missing_shards=missing,
            purpose=request.purpose,
            case_id=request.case_id,
            notice=LEADS_NOTICE,
        )


def rank_users(
    state: PeopleState, matches: list[list[Match]], leave_out: set[str], leave_user: str | None
) -> list[UserMatch]:
    """People by their best matching face, then by how many of their faces matched; each face once (its best)."""
    evidence: dict[str, dict[str, Match]] = {}
    for per_query in matches:
        for match in per_query:
            owner = state.owner.get(match.face_id)
            if owner is None or owner == leave_user or match.face_id in leave_out:
                continue
            held = evidence.setdefault(owner, {})
            if match.face_id not in held or match.similarity > held[match.face_id].similarity:
                held[match.face_id] = match
    ranked = []
    for user_id, found in evidence.items():
        faces_of = sorted(found.values(), key=lambda m: -m.similarity)
        best, size = faces_of[0], len(state.users[user_id].faces)
        ranked.append(
            UserMatch(
                user_id=user_id,
                similarity=best.similarity,
                estimated_false_match_rate=best.estimated_false_match_rate,
                false_match_rate_is_bound=best.false_match_rate_is_bound,
                user_false_match_rate_at_most=min(1.0, size * best.estimated_false_match_rate),
                user_faces=size,
                matched_faces=faces_of,
            )
        )
    return sorted(ranked, key=lambda u: (-u.similarity, -len(u.matched_faces), u.user_id))
