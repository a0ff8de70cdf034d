"""Each Rekognition operation as a call of our use cases: the same checks, floor and audit as `/v1`, answered in
Rekognition's shapes. Inputs arrive validated against botocore's model (shapes.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cluster.collections.manifest import DEFAULT_MAX_FALSE_MATCH_RATE, DEFAULT_SHARDS, Manifest
from cluster.errors import CollectionNotFound
from cluster.keys.access import Caller
from cluster.models.calibration import Rates
from cluster.models.recipes import recipe_of
from cluster.models.registry import DEFAULT_EMBEDDER
from cluster.pipeline.quality import QualityFilter
from serving.rekognition import render
from serving.rekognition.shapes import InvalidParameter
from serving.rekognition.similarity import cosine_for, percent
from serving.render import image_size
from serving.rules import MAX_USERS
from serving.schemas import FaceDetail, Match
from serving.usecases import collections, faces, images, ingest, people, search
from serving.usecases.context import Context
from serving.usecases.policy import SearchRequest

DEFAULT_THRESHOLD = 80.0  # Rekognition's default; on our map, the default floor's 1e-5 false matches


@dataclass(frozen=True)
class Who:
    """The caller behind a signed request, with the purpose its credential is bound to and its session's case."""

    caller: Caller
    purpose: str
    case_id: str | None


Operation = Callable[[Context, Who, dict[str, Any]], Awaitable[dict[str, Any]]]


def _quality(params: dict[str, Any], default: QualityFilter) -> QualityFilter:
    asked = params.get("QualityFilter")
    if asked is None:
        return default
    return QualityFilter.LOW if asked == "AUTO" else QualityFilter(asked)


async def _image(ctx: Context, image: dict[str, Any]) -> bytes:
    """An Image's bytes: inline, or an S3Object of the server's own ingest source."""
    if "Bytes" in image and "S3Object" not in image:
        return bytes(image["Bytes"])
    s3 = image.get("S3Object")
    if s3 is None or "Bytes" in image:
        raise InvalidParameter("Image needs exactly one of Bytes or S3Object")
    key = ingest.source_key_of(ctx, s3.get("Bucket", ""), s3.get("Name", ""))
    return (await ctx.in_thread(ingest.source_object, ctx, key))[0]


def _threshold(rates_of: Manifest | str | None, ctx: Context, asked: float | None) -> float | None:
    """Our cosine for a Rekognition threshold; None (the floor) when not asked, or when the collection does not
    exist (the use case then refuses, audited). A threshold below the floor reaches the floor check as it is,
    and is refused and audited there."""
    if asked is None or rates_of is None:
        return None
    return cosine_for(asked, ctx.models.rates(rates_of))


async def _manifest(ctx: Context, collection: str) -> Manifest | None:
    """The collection's manifest, or None: a missing collection is for the audited use case to report."""
    try:
        return await ctx.read_manifest(collection)
    except CollectionNotFound:
        return None


async def _owners(ctx: Context, collection: str) -> dict[str, str]:
    return (await ctx.in_thread(ctx.people(collection).state)).owner


def _request(who: Who, threshold: float | None, max_results: int = 10) -> SearchRequest:
    return SearchRequest(who.purpose, who.case_id, threshold, max_results)


async def create_collection(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    made = await collections.create(ctx, who.caller, p["CollectionId"], DEFAULT_SHARDS, DEFAULT_MAX_FALSE_MATCH_RATE)
    return {"StatusCode": 200, "CollectionArn": f"aws:rekognition:facegrid:collection/{made.name}",
            "FaceModelVersion": recipe_of(made.recipe, made.model_id).name}  # fmt: skip


async def describe_collection(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    described = await collections.describe(ctx, who.caller, p["CollectionId"])
    return {
        "FaceCount": described.face_count + described.live_face_count,
        "UserCount": described.user_count,
        "FaceModelVersion": recipe_of(described.recipe, described.model_id).name,
        "CollectionARN": f"aws:rekognition:facegrid:collection/{described.name}",
        "CreationTimestamp": render.timestamp(described.created_at),
    }


async def list_collections(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    start, size = render.offset_of(p.get("NextToken")), p.get("MaxResults") or 1000
    names = collections.names(ctx, who.caller)
    held = [(n, await _manifest(ctx, n)) for n in names[start : start + size]]
    page = [n for n, manifest in held if manifest is not None]  # one deleted meanwhile
    versions = [manifest.face_recipe.name for _, manifest in held if manifest is not None]
    out: dict[str, Any] = {"CollectionIds": page, "FaceModelVersions": versions}
    if start + size < len(names):
        out["NextToken"] = render.token(start + size)
    return out


async def delete_collection(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    await collections.delete(ctx, who.caller, p["CollectionId"])
    return {"StatusCode": 200}


async def index_faces(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    image = p["Image"]
    key = None
    if "S3Object" in image:
        key = ingest.source_key_of(ctx, image["S3Object"].get("Bucket", ""), image["S3Object"].get("Name", ""))
    blob = None if key is not None else await _image(ctx, image)
    answer = await ingest.add_faces(
        ctx,
        who.caller,
        p["CollectionId"],
        blob,
        p.get("ExternalImageId"),
        p.get("MaxFaces"),
        _quality(p, QualityFilter.LOW),
        key,
    )
    size = (answer.width, answer.height)
    return {
        "FaceRecords": [
            {
                "Face": {
                    "FaceId": render.face_uuid(f.face_id),
                    "BoundingBox": render.box(f.bbox, size),
                    "ImageId": render.image_uuid(answer.source),
                    "ExternalImageId": f.external_image_id,
                    "Confidence": round(f.confidence * 100, 4),
                },
                "FaceDetail": render.detail(
                    FaceDetail(
                        bbox=f.bbox, landmarks=f.landmarks, confidence=f.confidence, quality=f.quality, skip_reasons=[]
                    ),
                    size,
                ),
            }
            for f in answer.face_records
        ],
        "FaceModelVersion": answer.recipe,
        "UnindexedFaces": [
            {"Reasons": u.reasons, "FaceDetail": render.detail(u.face, size)} for u in answer.unindexed_faces
        ],
    }


async def list_faces(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    collection = p["CollectionId"]
    start, size = render.offset_of(p.get("NextToken")), min(p.get("MaxResults") or 1000, 1000)
    listed = await faces.page(ctx, who.caller, collection, size, start)
    owners = await _owners(ctx, collection)
    wanted = {render.face_id_of(f) for f in p.get("FaceIds", [])}
    model = (await ctx.read_manifest(collection)).face_recipe.name
    found = [
        render.face(r, model, owners.get(r.face_id))
        for r in listed.faces
        if (not wanted or r.face_id in wanted) and ("UserId" not in p or owners.get(r.face_id) == p["UserId"])
    ]
    out: dict[str, Any] = {"Faces": found, "FaceModelVersion": model}
    if listed.next_offset is not None:
        out["NextToken"] = render.token(listed.next_offset)
    return out


async def delete_faces(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    asked = [(render.face_id_of(uuid), uuid) for uuid in p["FaceIds"]]
    erased = await faces.erase(ctx, who.caller, p["CollectionId"], [ours for ours, _ in asked if ours], [])
    gone = set(erased.deleted_faces)
    return {
        "DeletedFaces": [render.face_uuid(f) for f in erased.deleted_faces],
        "UnsuccessfulFaceDeletions": [
            {"FaceId": uuid, "Reasons": ["FACE_NOT_FOUND"]} for ours, uuid in asked if ours not in gone
        ],
    }


def _face_matches(matches: list[Match], rates: Rates, model: str, owners: dict[str, str]) -> list[dict[str, Any]]:
    similarities = percent(np.array([m.similarity for m in matches]), rates).tolist()
    return [
        {"Similarity": float(s), "Face": render.face(m, model, owners.get(m.face_id))}
        for m, s in zip(matches, similarities, strict=True)
    ]


async def search_faces(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    collection = p["CollectionId"]
    manifest = await _manifest(ctx, collection)
    cap = min(p.get("MaxFaces", 100), ctx.settings.serving.max_results)
    request = _request(who, _threshold(manifest, ctx, p.get("FaceMatchThreshold")), cap)
    face_id = render.face_id_of(p["FaceId"]) or p["FaceId"]
    answer = await search.search_face(ctx, who.caller, collection, face_id, request)
    held = await ctx.read_manifest(collection)
    rates, version = ctx.models.rates(held), held.face_recipe.name
    return {
        "SearchedFaceId": p["FaceId"],
        "FaceMatches": _face_matches(answer.matches, rates, version, await _owners(ctx, collection)),
        "FaceModelVersion": version,
    }


async def search_faces_by_image(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    collection = p["CollectionId"]
    manifest = await _manifest(ctx, collection)
    blob = await _image(ctx, p["Image"])
    cap = min(p.get("MaxFaces", 100), ctx.settings.serving.max_results)
    request = _request(who, _threshold(manifest, ctx, p.get("FaceMatchThreshold")), cap)
    answer = await search.search(ctx, who.caller, collection, blob, request)
    size = image_size(blob)
    held = await ctx.read_manifest(collection)
    rates, version = ctx.models.rates(held), held.face_recipe.name
    return {
        "SearchedFaceBoundingBox": render.box(answer.searched_face.bbox, size),
        "SearchedFaceConfidence": round(answer.searched_face.confidence * 100, 4),
        "FaceMatches": _face_matches(answer.matches, rates, version, await _owners(ctx, collection)),
        "FaceModelVersion": version,
    }


async def compare_faces(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    source, target = await _image(ctx, p["SourceImage"]), await _image(ctx, p["TargetImage"])
    threshold = _threshold(DEFAULT_EMBEDDER, ctx, p.get("SimilarityThreshold"))
    answer = await images.compare(
        ctx, who.caller, source, target, purpose=who.purpose, case_id=who.case_id, threshold=threshold
    )
    rates, size_s, size_t = ctx.models.rates(answer.model_id), image_size(source), image_size(target)
    return {
        "SourceImageFace": {
            "BoundingBox": render.box(answer.source_face.bbox, size_s),
            "Confidence": round(answer.source_face.confidence * 100, 4),
        },
        "FaceMatches": [
            {"Similarity": float(percent(m.similarity, rates)), "Face": render.compared(m.face, size_t)}
            for m in answer.face_matches
        ],
        "UnmatchedFaces": [render.compared(m.face, size_t) for m in answer.unmatched_faces],
    }


async def detect_faces(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    blob = await _image(ctx, p["Image"])
    answer = await images.detect(ctx, who.caller, blob)
    return {"FaceDetails": [render.detail(f, (answer.width, answer.height)) for f in answer.faces]}


async def create_user(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    await people.create(ctx, who.caller, p["CollectionId"], p["UserId"])
    return {}


async def delete_user(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    await people.delete(ctx, who.caller, p["CollectionId"], p["UserId"], erase_faces=False)
    return {}


async def list_users(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    start, size = render.offset_of(p.get("NextToken")), p.get("MaxResults") or 500
    listed = await people.page(ctx, who.caller, p["CollectionId"], size, start)
    out: dict[str, Any] = {"Users": [{"UserId": u.user_id, "UserStatus": "ACTIVE"} for u in listed.users]}
    if listed.next_offset is not None:
        out["NextToken"] = render.token(listed.next_offset)
    return out


def _unsuccessful(changes: Any, by_ours: dict[str, str]) -> list[dict[str, Any]]:
    reasons = {"FACE_NOT_FOUND": "FACE_NOT_FOUND", "NOT_ASSOCIATED_TO_THIS_USER": "ASSOCIATED_TO_A_DIFFERENT_USER"}
    return [
        {
            "FaceId": by_ours.get(u.face_id, u.face_id),
            **({"UserId": u.user_id} if u.user_id else {}),
            "Reasons": [reasons.get(u.reason, u.reason)],
        }
        for u in changes.unsuccessful
    ]


async def _association(
    ctx: Context, who: Who, p: dict[str, Any], change: Any, done: str, failed: str
) -> dict[str, Any]:
    """AssociateFaces and DisassociateFaces: our ids in, theirs out, and the refused faces with reasons."""
    by_ours = {render.face_id_of(f) or f: f for f in p["FaceIds"]}
    changed = await change(ctx, who.caller, p["CollectionId"], p["UserId"], list(by_ours))
    return {
        done: [{"FaceId": by_ours[f]} for f in changed.changed_faces],
        failed: _unsuccessful(changed, by_ours),
        "UserStatus": "ACTIVE",
    }


async def associate_faces(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    return await _association(ctx, who, p, people.associate, "AssociatedFaces", "UnsuccessfulFaceAssociations")


async def disassociate_faces(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    done, failed = "DisassociatedFaces", "UnsuccessfulFaceDisassociations"
    return await _association(ctx, who, p, people.disassociate, done, failed)


def _user_matches(answer: Any, rates: Any) -> list[dict[str, Any]]:
    return [
        {"Similarity": float(percent(u.similarity, rates)), "User": {"UserId": u.user_id, "UserStatus": "ACTIVE"}}
        for u in answer.user_matches
    ]


async def search_users(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    collection = p["CollectionId"]
    manifest = await _manifest(ctx, collection)
    request = _request(who, _threshold(manifest, ctx, p.get("UserMatchThreshold")))
    face_id = (render.face_id_of(p["FaceId"]) or p["FaceId"]) if "FaceId" in p else None
    cap = min(p.get("MaxUsers", 10), MAX_USERS)
    answer = await people.search(
        ctx, who.caller, collection, request, face_id=face_id, user_id=p.get("UserId"), max_users=cap
    )
    held = await ctx.read_manifest(collection)
    rates, version = ctx.models.rates(held), held.face_recipe.name
    out: dict[str, Any] = {"UserMatches": _user_matches(answer, rates), "FaceModelVersion": version}
    out["SearchedFace" if "FaceId" in p else "SearchedUser"] = (
        {"FaceId": p["FaceId"]} if "FaceId" in p else {"UserId": p["UserId"]}
    )
    return out


async def search_users_by_image(ctx: Context, who: Who, p: dict[str, Any]) -> dict[str, Any]:
    collection = p["CollectionId"]
    manifest = await _manifest(ctx, collection)
    blob = await _image(ctx, p["Image"])
    request = _request(who, _threshold(manifest, ctx, p.get("UserMatchThreshold")))
    cap = min(p.get("MaxUsers", 10), MAX_USERS)
    answer = await people.search(ctx, who.caller, collection, request, image=blob, max_users=cap)
    size = image_size(blob)
    searched = render.detail(answer.searched_face, size) if answer.searched_face else {}
    return {
        "UserMatches": _user_matches(answer, ctx.models.rates(await ctx.read_manifest(collection))),
        "FaceModelVersion": answer.model_id,
        "SearchedFace": {"FaceDetail": searched},
        "UnsearchedFaces": [],
    }


OPERATIONS: dict[str, Operation] = {
    "CreateCollection": create_collection,
    "DescribeCollection": describe_collection,
    "ListCollections": list_collections,
    "DeleteCollection": delete_collection,
    "IndexFaces": index_faces,
    "ListFaces": list_faces,
    "DeleteFaces": delete_faces,
    "SearchFaces": search_faces,
    "SearchFacesByImage": search_faces_by_image,
    "CompareFaces": compare_faces,
    "DetectFaces": detect_faces,
    "CreateUser": create_user,
    "DeleteUser": delete_user,
    "ListUsers": list_users,
    "AssociateFaces": associate_faces,
    "DisassociateFaces": disassociate_faces,
    "SearchUsers": search_users,
    "SearchUsersByImage": search_users_by_image,
}
