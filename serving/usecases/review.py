"""Human review of leads: the faces a search returned, viewed as crops of their source photos (only by whom they
were returned to, audited as a view) and decided on by a reviewer, each decision an audit record linked to the
search's own."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from cluster.audit.log import read_records, record_at
from cluster.audit.transparency import returned_faces
from cluster.collections.manifest import Manifest
from cluster.collections.photos import KeptPhotos, photo_sha256
from cluster.errors import FaceNotFound, InvalidRequest, PhotoNotKept
from cluster.keys.access import Action, Caller, Forbidden, authorize
from cluster.storage import LocalStore, ObjectNotFound, open_store
from serving.usecases.audited import audited, clipped
from serving.usecases.context import Context

DECISIONS = ("possible match", "not a match", "inconclusive")
SEARCH_ACTIONS = ("search", "search-vector", "search-face", "search-users")
CROP_MARGIN = 0.35  # of the box's size, on each side
CROP_PX = 160
MAX_NOTE = 1000


def search_record(ctx: Context, caller: Caller, seq: int) -> dict[str, Any]:
    """A search's audit record, for the caller it was run by (or an auditor or admin)."""
    record = record_at(ctx.store, seq)
    if record is None or record.get("action") not in SEARCH_ACTIONS or record.get("outcome") != "ok":
        raise InvalidRequest(f"audit record {seq} is not a search that returned faces")
    if record.get("key_id") != caller.key_id and not caller.may(Action.AUDIT_READ):
        raise Forbidden(f"search {seq} was not run by key {caller.key_id}")
    return record


def past_search(ctx: Context, caller: Caller, seq: int) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A search's audit record (as `search_record` allows it) and the latest decision on each of its faces."""
    record = search_record(ctx, caller, seq)
    return record, decisions(seq, read_records(ctx.store))


def decisions(seq: int, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The latest decision on each face of search `seq`, from review records."""
    found: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("action") == "review" and record.get("search_seq") == seq and record.get("outcome") == "ok":
            found[record["face_id"]] = record
    return found


async def decide(
    ctx: Context, caller: Caller, seq: int, face_id: str, decision: str, note: str | None
) -> dict[str, Any]:
    """Record a reviewer's decision on one returned face; the record names the search, the face's rank in it, the
    decision and the reviewer."""
    fields = {"search_seq": seq, "face_id": clipped(face_id, 64), "decision": clipped(decision, 40)}
    async with audited(ctx, caller, "review", None, **fields, note=clipped(note, MAX_NOTE)) as entry:
        authorize(caller, Action.SEARCH)
        if decision not in DECISIONS:
            raise InvalidRequest(f"decision must be one of {list(DECISIONS)}")
        if note is not None and len(note) > MAX_NOTE:
            raise InvalidRequest(f"a note has at most {MAX_NOTE} characters")
        record = await ctx.in_thread(search_record, ctx, caller, seq)
        faces = returned_faces(record)
        if face_id not in faces:
            raise InvalidRequest(f"face {clipped(face_id, 64)!r} was not returned by search {seq}")
        entry.update(
            collection=record.get("collection"),
            case_id=record.get("case_id"),
            purpose=record.get("purpose"),
            rank=faces.index(face_id) + 1,
        )
    return entry


async def crop(ctx: Context, caller: Caller, collection: str, face_id: str, seq: int) -> bytes:
    """A JPEG crop of a returned face's source photo (its box and a margin): for a caller allowed to search the
    collection, for a face its own search `seq` returned; audited as a view."""
    fields = {"face_id": clipped(face_id, 64), "search_seq": seq}
    async with audited(ctx, caller, "view-face", collection, **fields) as entry:
        authorize(caller, Action.SEARCH, collection)
        record = await ctx.in_thread(search_record, ctx, caller, seq)
        if record.get("collection") != collection or face_id not in returned_faces(record):
            raise Forbidden(f"face {clipped(face_id, 64)!r} was not returned to this key by search {seq}")
        entry["case_id"] = record.get("case_id")
        manifest = await ctx.read_manifest(collection, fresh=True)
        held = await ctx.shards(collection).records(manifest, [face_id])  # an erased face is in no shard
        if face_id not in held:
            raise FaceNotFound(f"face {face_id!r} is not in collection {collection!r} (erased, or never indexed)")
        return await ctx.in_thread(_crop, ctx, collection, held[face_id]["source_key"], held[face_id]["bbox"])


def _crop(ctx: Context, collection: str, location: str, box: list[float]) -> bytes:
    blob = source_photo(ctx, collection, location)
    with Image.open(io.BytesIO(blob)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * CROP_MARGIN, (y2 - y1) * CROP_MARGIN
    face = image.crop((max(0, x1 - mx), max(0, y1 - my), min(image.width, x2 + mx), min(image.height, y2 + my)))
    face.thumbnail((CROP_PX, CROP_PX))
    out = io.BytesIO()
    face.save(out, format="JPEG", quality=88)
    return out.getvalue()


def photo_gone(manifest: Manifest) -> str:
    """Why an uploaded face has no photo, in the words the console and the API show."""
    if not manifest.keep_photos:
        return f"collection {manifest.name!r} was created with keeping photos off: this face's photo was not kept"
    return "this face's photo is no longer kept (added before photos were kept, or erased since)"


def photos_gone(ctx: Context, collection: str, matches: list[Any]) -> dict[str, str]:
    """Face id -> why there is no crop, for the returned faces added by upload whose photo is not kept (the
    console says so in place of the crop). Blocking: a store read per uploaded face."""
    photos = KeptPhotos(ctx.store, collection)
    gone = {}
    for match in matches:
        row = match if isinstance(match, dict) else match.model_dump()
        face_id, source = str(row["face_id"]), row.get("source")
        sha256 = photo_sha256(source or "")
        if sha256 is not None and not photos.exists(sha256):
            gone[face_id] = photo_gone(ctx.manifest(collection))
    return gone


def source_photo(ctx: Context, collection: str, location: str) -> bytes:
    """The photo a record names: the collection's kept photo of an upload, an object of an S3 source or a file of
    a folder source."""
    sha256 = photo_sha256(location)
    if sha256 is not None:
        try:
            return KeptPhotos(ctx.store, collection).get(sha256)
        except ObjectNotFound as exc:
            raise PhotoNotKept(photo_gone(ctx.manifest(collection))) from exc
    try:
        if location.startswith("s3://"):
            bucket, _, key = location[len("s3://") :].partition("/")
            return open_store(f"s3://{bucket}", ctx.settings).get(key)
        folder, _, name = location.removeprefix("file://").rpartition("/")
        return LocalStore(Path(folder)).get(name)
    except ObjectNotFound as exc:
        raise FaceNotFound("the face's source photo is no longer in its source") from exc
