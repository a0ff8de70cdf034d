"""Adding one photo's faces to a collection (Rekognition's IndexFaces): durable in the live log before it answers,
visible to every server's searches within a second, idempotent; and readmitting what was erased."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import pyarrow as pa

from cluster.collections.erasures import ErasureRegister
from cluster.collections.live import live_segments, segment_key
from cluster.collections.photos import KeptPhotos
from cluster.collections.records import face_rows, face_schema, shard_of
from cluster.errors import CollectionChanged, InvalidRequest, SourceObjectNotFound
from cluster.indexing.embedder import source_location
from cluster.keys.access import Action, Caller, authorize
from cluster.pipeline.quality import QualityFilter
from cluster.storage import ObjectInfo, ObjectNotFound, open_store
from cluster.text import check_text
from serving import render
from serving.rules import MAX_EXTERNAL_ID, MAX_FACES_INDEXED
from serving.schemas import IndexedFace, IndexFacesAnswer, Readmitted, UnindexedFace
from serving.usecases.audited import audited, clipped
from serving.usecases.context import Context
from serving.usecases.images import probe_faces

# Live-log segments a collection may hold before an ingest starts a fold (a publish) in the background: enough to
# keep publishes rare under a stream of single photos, few enough that shards rebuild their live index in
# milliseconds.
FOLD_AFTER_SEGMENTS = 256
ERASED = "ERASED"
# Embeddings of one add, at most: a second only when a cut-over to another model lands during the first.
CUT_OVER_TRIES = 3
log = logging.getLogger("facegrid.ingest")


async def add_faces(
    ctx: Context,
    caller: Caller,
    collection: str,
    blob: bytes | None,
    external_image_id: str | None = None,
    max_faces: int | None = None,
    quality_filter: QualityFilter = QualityFilter.LOW,
    object_key: str | None = None,
) -> IndexFacesAnswer:
    """One photo's faces into the live log: uploaded bytes (`blob`), or the object `object_key` of the configured
    ingest source, which is then recorded exactly as an index job over that source would record it (same
    location, etag and face ids: a later job adds nothing twice)."""
    fields = {"external_image_id": clipped(external_image_id, MAX_EXTERNAL_ID), "object_key": clipped(object_key, 1024)}
    async with audited(ctx, caller, "index-faces", collection, **fields) as entry:
        authorize(caller, Action.FACES_WRITE, collection)
        if object_key is not None:
            photo, key, etag, location = await ctx.in_thread(source_object, ctx, object_key)
            external = external_image_id or object_key
        elif blob is not None:
            photo = blob
            # The same bytes under the same external id are the same object: same key, etag and face ids.
            etag = hashlib.sha256(photo).hexdigest()
            external = external_image_id or etag
            key, location = f"upload/{external}", f"upload://{etag}"
        else:
            raise InvalidRequest("send an image, or name an object of the ingest source with object_key")
        digest = etag if object_key is None else hashlib.sha256(photo).hexdigest()
        entry["image_sha256"] = digest
        if len(external) > MAX_EXTERNAL_ID or not external.strip():
            raise InvalidRequest(f"external_image_id must be 1-{MAX_EXTERNAL_ID} characters")
        check_text(external, "external_image_id")
        if max_faces is not None and not 1 <= max_faces <= MAX_FACES_INDEXED:
            raise InvalidRequest(f"max_faces must be between 1 and {MAX_FACES_INDEXED}")
        manifest = await ctx.read_manifest(collection)
        for _ in range(CUT_OVER_TRIES):
            image = await probe_faces(ctx, photo, max_faces, manifest.face_recipe, quality_filter, ctx.ingests)
            rows = face_rows(collection, key, etag, location, external, image.faces, f"ingest-{caller.key_id}")
            erased = await ctx.in_thread(ErasureRegister(ctx.store, collection).erased_ids)
            kept = [(r, f) for r, f in zip(rows, image.faces, strict=True) if r["face_id"] not in erased]
            if not kept:
                break
            table = pa.Table.from_pylist([r for r, _ in kept], face_schema(manifest.dim))
            segment = segment_key(manifest, key, etag)
            keep = photo if blob is not None and manifest.keep_photos else None
            written = await ctx.in_thread(_write_segment, ctx, collection, segment, table, digest, keep)
            entry["photo_kept"] = keep is not None
            # A cut-over to another model (or a rollback) between the manifest read and the write left these faces
            # in the log of the version before (which keeps them, for a rollback): embedded again for the one served.
            current = await ctx.read_manifest(collection, fresh=True)
            if current.log == manifest.log:
                owners = {int(shard_of(r["faiss_id"], manifest.shard_count)) for r, _ in kept}
                await ctx.shards(collection).added(manifest, segment, written.etag, owners)  # elsewhere a poll
                fold_when_long(ctx, collection)
                break
            manifest = current
        else:
            raise CollectionChanged(f"collection {collection!r} kept switching models during this add; add it again")
        unindexed = [
            UnindexedFace(reasons=[ERASED], face=render.face_detail(f))
            for r, f in zip(rows, image.faces, strict=True)
            if r["face_id"] in erased
        ]
        unindexed += [
            UnindexedFace(reasons=[str(r) for r in f.skip_reasons], face=render.face_detail(f)) for f in image.skipped
        ]
        entry["face_ids"] = [r["face_id"] for r, _ in kept]
    return IndexFacesAnswer(
        collection=collection,
        model_id=manifest.model_id,
        recipe=manifest.face_recipe.name,
        external_image_id=external,
        image_sha256=digest,
        source=location,
        width=image.width,
        height=image.height,
        face_records=[
            IndexedFace(
                face_id=r["face_id"],
                external_image_id=external,
                **render.face_detail(f).model_dump(exclude={"skip_reasons"}),
            )
            for r, f in kept
        ],
        unindexed_faces=unindexed,
    )


def _write_segment(
    ctx: Context, collection: str, segment: str, table: pa.Table, sha256: str, photo: bytes | None
) -> ObjectInfo:
    """The faces into the live log, their kept photo first: under the photo's lock, so that an erasure of the
    photo's last face, racing, either sees these faces or has deleted the photo before it is stored again, and a
    cut-over to another model either sees this segment or is seen by the manifest read after it."""
    photos = KeptPhotos(ctx.store, collection)
    with photos.locked(sha256):
        if photo is not None:
            photos.keep(sha256, photo)
        ctx.store.put_parquet(segment, table)
        return ctx.store.info(segment)


def source_key_of(ctx: Context, bucket: str, name: str) -> str:
    """The key inside the ingest source of an object named by bucket and name (Rekognition's S3Object): only
    objects of that source can be read, never another bucket of the same credentials."""
    uri = ctx.settings.serving.ingest_source or ""
    if not uri.startswith("s3://"):
        raise SourceObjectNotFound("S3Object images are read from the server's ingest source, which is no s3:// one")
    own, _, prefix = uri[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if bucket != own or (prefix and not name.startswith(prefix + "/")):
        raise SourceObjectNotFound(f"S3Object must name an object under s3://{own}/{prefix}, the ingest source")
    return name[len(prefix) + 1 :] if prefix else name


def source_object(ctx: Context, object_key: str) -> tuple[bytes, str, str, str]:
    """The named object of the ingest source: bytes, key, etag and location (as index jobs record them)."""
    uri = ctx.settings.serving.ingest_source
    if uri is None:
        raise InvalidRequest("this server has no ingest source (FACEGRID_SERVING__INGEST_SOURCE): upload the image")
    if not object_key or object_key.startswith("/") or ".." in object_key.split("/"):
        raise InvalidRequest("object_key must be a key inside the ingest source")
    source = open_store(uri, ctx.settings)
    try:
        info = source.info(object_key)
        blob = source.get(object_key)
    except ObjectNotFound as exc:
        raise SourceObjectNotFound(f"no object {object_key!r} in the ingest source") from exc
    return blob, object_key, info.etag, source_location(source.uri, object_key)


def fold_when_long(ctx: Context, collection: str) -> None:
    """Start a fold of the live log in the background once it is long (one at a time per collection)."""
    if collection in ctx.folding:
        return

    async def fold() -> None:
        try:
            manifest = await ctx.read_manifest(collection, fresh=True)
            if len(await ctx.in_thread(live_segments, ctx.collections, manifest)) < FOLD_AFTER_SEGMENTS:
                return
            published = await ctx.publish_task(lambda p: p.publish_latest(collection))
            await ctx.shards(collection).sync(manifest, ctx.remember(published))
        except Exception:  # nothing is lost: the log stays, and the next publish folds it
            log.warning("folding the live log of %s failed", collection, exc_info=True)
        finally:
            ctx.folding.discard(collection)

    ctx.folding.add(collection)
    ctx.background(asyncio.ensure_future(fold()))


async def readmit(ctx: Context, caller: Caller, collection: str, face_ids: list[str], sources: list[str]) -> Readmitted:
    """Lift erasures (by face id or source object), so that the next index run may bring those faces back: an
    explicit, audited admin act."""
    async with audited(ctx, caller, "readmit-faces", collection, face_ids=face_ids, sources=sources) as entry:
        authorize(caller, Action.COLLECTIONS_WRITE, collection)
        if not face_ids and not sources:
            raise InvalidRequest("give face ids or source objects to readmit")
        await ctx.read_manifest(collection)  # the collection exists
        register = ErasureRegister(ctx.store, collection)
        lifted = await ctx.in_thread(register.readmit, set(face_ids), set(sources), caller.key_id)
        entry["readmitted"] = [e["face_id"] for e in lifted]
    return Readmitted(collection=collection, readmitted=lifted)
