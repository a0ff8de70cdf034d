"""A collection's faces: list them, erase them."""

from __future__ import annotations

from cluster.collections.erasures import ErasureRegister
from cluster.collections.live import all_faces, live_face_count
from cluster.collections.photos import UPLOAD
from cluster.errors import InvalidRequest
from cluster.keys.access import Action, Caller, authorize
from serving import render
from serving.rules import MAX_PAGE
from serving.schemas import FacePage, FacesDeleted
from serving.usecases.audited import audited
from serving.usecases.context import Context

LISTED = ["face_id", "external_image_id", "source_key", "source_etag", "bbox", "confidence", "quality", "indexed_at"]


async def page(ctx: Context, caller: Caller, collection: str, limit: int, offset: int) -> FacePage:
    """A page of face records (sources and external ids: a read that is audited, with how many it showed)."""
    async with audited(ctx, caller, "list-faces", collection, limit=limit, offset=offset) as entry:
        authorize(caller, Action.FACES_READ, collection)
        if not 1 <= limit <= MAX_PAGE or offset < 0:
            raise InvalidRequest(f"limit must be 1-{MAX_PAGE} and offset non-negative")
        manifest = await ctx.read_manifest(collection, fresh=True)
        table = await ctx.in_thread(lambda: all_faces(ctx.collections, manifest, LISTED).sort_by("face_id"))
        shown = table.slice(offset, limit).to_pylist()
        entry.update(faces=len(shown), total=table.num_rows)
    return FacePage(
        collection=collection,
        total=table.num_rows,
        offset=offset,
        limit=limit,
        faces=[render.face_record(r) for r in shown],
        next_offset=offset + limit if offset + limit < table.num_rows else None,
    )


async def erase(
    ctx: Context, caller: Caller, collection: str, face_ids: list[str], external_ids: list[str]
) -> FacesDeleted:
    """Real erasure: the records are rewritten and the snapshots rebuilt without the faces (a Ray task)."""
    fields = {"face_ids": face_ids, "external_ids": external_ids}
    async with audited(ctx, caller, "delete-faces", collection, **fields) as entry:
        authorize(caller, Action.FACES_DELETE, collection)
        if not face_ids and not external_ids:
            raise InvalidRequest("give face_ids or external_image_ids to delete")
        manifest = await ctx.read_manifest(collection, fresh=True)
        wanted, named = set(face_ids), set(external_ids)
        by = caller.key_id
        published, rows = await ctx.publish_task(lambda p: p.erase_faces(manifest, wanted, named, by))
        erased = [r["face_id"] for r in rows]
        # Erased before (by a racing request, or long ago): gone all the same, and said so.
        register = await ctx.in_thread(ErasureRegister(ctx.store, collection).erased_ids)
        already = sorted((wanted - set(erased)) & register)
        photos = sorted({r["source"].removeprefix(UPLOAD) for r in rows if r.get("photo_deleted")})
        entry.update(deleted_faces=erased, already_erased=already, deleted_photos=photos)
        await ctx.in_thread(_disassociate_erased, ctx, collection, erased, by)
        ctx.forget(collection)
        if erased or already:  # this server's shards serve none of them from this answer on
            await ctx.shards(collection).sync(published, published)
        total = published.face_count + await ctx.in_thread(live_face_count, ctx.collections, published)
    return FacesDeleted(
        deleted_faces=erased,
        already_erased=already,
        unknown_face_ids=sorted(wanted - set(erased) - register),
        collection_faces=total,
    )


def _disassociate_erased(ctx: Context, collection: str, erased: list[str], by: str) -> None:
    """An erased face belongs to nobody any more (a readmitted one comes back unassociated)."""
    people = ctx.people(collection)
    owned = [f for f in erased if f in people.state().owner]
    if owned:
        people.write("disassociate", "*", by, owned, reason="erased")
