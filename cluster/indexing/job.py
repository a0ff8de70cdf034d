"""The index job: list a source, partition it deterministically, run embedder actors, publish the collection.

Where partitions run (Ray actors on any node); what one partition does is cluster/indexing/embedder.py."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import ray

from cluster.collections.erasures import ErasureRegister
from cluster.collections.live import all_faces
from cluster.collections.manifest import Collections, Manifest
from cluster.collections.publish import Publisher
from cluster.errors import ModelMismatch
from cluster.indexing.embedder import (
    IndexJobSpec,
    IndexPartition,
    IndexRequest,
    Partition,
    PartitionResult,
    source_location,
)
from cluster.models.recipes import recipe
from cluster.models.registry import ModelRegistry
from cluster.pipeline.errors import Reason
from cluster.raycluster import cluster_gpus, embedder_count, embedder_options, ensure_ray
from cluster.settings import Settings
from cluster.shards.set import ShardSet
from cluster.storage import ObjectInfo, ObjectStore, open_store

Progress = Callable[[PartitionResult], None]
log = logging.getLogger("facegrid.indexing")
# A unit of work an actor takes (an index job's Partition, an upgrade's part): it has a number, `part`.
Part = TypeVar("Part")


def job_id_for(collection: str, source_uri: str, version: int) -> str:
    digest = hashlib.sha256(f"{collection}\0{source_uri}".encode()).hexdigest()[:10]
    return f"idx-{digest}-v{version}"


def iter_partitions(objects: Iterable[ObjectInfo], size: int, first: int = 0) -> Iterator[Partition]:
    """Consecutive runs of the listing, which both stores give in a stable order: the same source, the same parts.
    Numbered from `first`: a resumed job numbers past its checkpoint's parts, whose files it keeps."""
    batch: list[ObjectInfo] = []
    part = first
    for obj in objects:
        batch.append(obj)
        if len(batch) == size:
            yield Partition(part, batch)
            part, batch = part + 1, []
    if batch:
        yield Partition(part, batch)


def indexed_objects(collections: Collections, manifest: Manifest) -> set[tuple[str, str]]:
    """(location, etag) of every object the collection already holds, as faces or as error records; objects that
    could not be read are not held: the next run tries them again."""
    errors = collections.errors(manifest)
    errors = errors.filter(pc.not_equal(errors.column("reason"), str(Reason.READ_FAILED)))
    done: set[tuple[str, str]] = set()
    faces = all_faces(collections, manifest, ["face_id", "source_key", "source_etag"])  # the live log's too
    for table in (faces, errors):
        done.update(sources(table))
    return done


def objects_in(store: ObjectStore, results: Iterable[PartitionResult]) -> set[tuple[str, str]]:
    """(location, etag) of the objects these partitions read, from their own files: a checkpoint names files, not
    keys, and a listing that changed since (a photo added that sorts first) cannot shift what counts as done.
    Objects that could not be read are left out (tried again)."""
    done: set[tuple[str, str]] = set()
    for result in results:
        for key, errors in ((result.face_file, False), (result.error_file, True)):
            if key is None:
                continue
            table = store.get_parquet(key, ["source_key", "source_etag", *(["reason"] if errors else [])])
            if errors:
                table = table.filter(pc.not_equal(table.column("reason"), str(Reason.READ_FAILED)))
            done.update(sources(table))
    return done


def sources(table: pa.Table) -> list[tuple[str, str]]:
    """(location, etag) of each row of a face or error table."""
    return list(zip(table.column("source_key").to_pylist(), table.column("source_etag").to_pylist(), strict=True))


def pending_objects(source: ObjectStore, done: set[tuple[str, str]]) -> Iterator[ObjectInfo]:
    """Objects of the source not yet in the collection (same location and etag): re-runs add nothing twice."""
    return (o for o in source.list() if (source_location(source.uri, o.key), o.etag) not in done)


def run_partitions(actors: list[Any], partitions: Iterator[Part]) -> Iterator[Any]:
    """One partition in flight per actor: memory stays bounded however long the listing (ActorPool would queue
    every partition up front). An actor that dies (its node lost, its process killed) leaves the pool and its
    partition goes to another, under the same result names; a restart could wait for resources the cluster no
    longer has, and the job with it. The job fails only when no actor is left."""
    idle = list(actors)
    running: dict[Any, tuple[Any, Part]] = {}
    again: list[Part] = []
    while True:
        while idle and (part := again.pop() if again else next(partitions, None)) is not None:
            actor = idle.pop()
            running[actor.__call__.remote(part)] = (actor, part)
        if not running:
            return
        [ready], _ = ray.wait(list(running), num_returns=1)
        actor, part = running.pop(ready)
        try:
            result = ray.get(ready)
        except ray.exceptions.RayActorError:
            log.warning(
                "an embedder died with partition %s; %d left, the partition goes to another",
                getattr(part, "part", "?"),
                len(idle) + len(running),
            )
            if not idle and not running:
                raise
            again.append(part)
            continue
        idle.append(actor)
        yield result


def check_model(
    manifest: Manifest, registry: ModelRegistry, model_id: str | None, recipe_name: str | None = None
) -> None:
    """An existing collection keeps its own model and recipe: asking for another one, or a build whose file of that
    model differs from the one the collection was indexed with, is refused rather than mixing embeddings."""
    if model_id is not None and model_id != manifest.model_id:
        raise ModelMismatch(
            f"collection {manifest.name!r} holds {manifest.model_id} embeddings, not {model_id}: "
            f"index into a new collection created with --model {model_id}"
        )
    held = manifest.face_recipe.name
    if recipe_name is not None and recipe(recipe_name).name != held:
        raise ModelMismatch(
            f"collection {manifest.name!r} holds faces of recipe {held}, not {recipe(recipe_name).name}: "
            f"index into a new collection created with --recipe {recipe_name}"
        )
    fused = manifest.face_recipe.fused_with
    pinned = [(manifest.model_id, manifest.model_sha256)]
    pinned += [(fused, manifest.fused_model_sha256 or "")] if fused else []
    for model_id, sha256 in pinned:
        built = registry.pin(model_id)["model_sha256"]
        if sha256 != built:
            raise ModelMismatch(
                f"collection {manifest.name!r} was indexed with {model_id} ({sha256[:12]}); "
                f"this build's file of that model is {built[:12]}: create a new collection and re-index"
            )


def _checkpoint_key(job_id: str) -> str:
    return f"jobs/{job_id}/checkpoint.json"


def run_index_job(
    settings: Settings,
    request: IndexRequest,
    on_plan: Callable[[int], None] | None = None,
    on_partition: Progress | None = None,
) -> dict[str, Any]:
    """Index every pending object of the request's source into its collection (which must exist), resuming from
    the job's checkpoint, and publish. Audited by the use case that calls it (serving/usecases/indexing.py)."""
    started = time.perf_counter()
    store = open_store(settings.store, settings)
    source = open_store(request.source, settings)
    # Absolute locations: actors run in other working directories, and records name their source for good.
    settings = settings.model_copy(update={"store": store.uri})
    collections = Collections(store)
    registry = ModelRegistry(settings.model_dir)
    registry.build_all()
    manifest = collections.get(request.collection)
    check_model(manifest, registry, request.model, request.recipe)
    # Objects held, and objects whose faces were erased (until an admin readmits them): a re-run adds neither.
    done_objects = indexed_objects(collections, manifest) | ErasureRegister(store, request.collection).erased_objects()
    job_id = job_id_for(request.collection, source.uri, manifest.version)
    if on_plan:
        on_plan(sum(1 for _ in pending_objects(source, done_objects)))  # a counting pass, for progress only
    checkpoint: dict[str, Any] = {"job_id": job_id, "partitions": {}}
    if store.exists(_checkpoint_key(job_id)):
        checkpoint = json.loads(store.get(_checkpoint_key(job_id)))
    done = {int(k): v for k, v in checkpoint["partitions"].items()}
    results = [PartitionResult(**{**v, "reasons": Counter(v["reasons"])}) for v in done.values()]
    for result in results:
        if on_partition:
            on_partition(result)
    pending = pending_objects(source, done_objects | objects_in(store, results))
    todo = iter_partitions(pending, request.partition_size, first=max(done, default=-1) + 1)
    spec = IndexJobSpec(
        request=request,
        job_id=job_id,
        store_uri=store.uri,
        source_uri=source.uri,
        model_id=manifest.model_id,
        recipe=manifest.face_recipe.name,
    )
    first = next(todo, None)
    if first is not None:
        ensure_ray()
        gpus = cluster_gpus()
        # One ONNX Runtime thread per actor: the actors, not the threads, spread the work over the cores.
        runtime = settings.runtime.model_copy(update={"intra_op_threads": 1})
        actor_settings = settings.model_copy(update={"runtime": runtime})
        remote = ray.remote(IndexPartition).options(**embedder_options(gpus))
        actors: list[Any] = [remote.remote(actor_settings, spec) for _ in range(embedder_count(gpus))]
        for result in run_partitions(actors, itertools.chain([first], todo)):
            results.append(result)
            checkpoint["partitions"][str(result.part)] = result.as_dict()
            store.put(_checkpoint_key(job_id), json.dumps(checkpoint).encode())
            if on_partition:
                on_partition(result)
        # Their CPUs back before the publish: a job that held them while it waited on shard hosts starting (a
        # search after a reshard) starved those hosts of the share they need, with two such jobs for ever.
        for actor in actors:
            ray.kill(actor)
    face_files = [r.face_file for r in results if r.face_file]
    error_files = [r.error_file for r in results if r.error_file]
    published = manifest
    if face_files or error_files:
        # Objects an earlier run could not read and this one did: their READ_FAILED records go.
        clear_read_failures(store, collections.get(request.collection).error_files, objects_in(store, results))
        published = Publisher(collections).publish_latest(request.collection, face_files, error_files)
        ShardSet(settings, request.collection).sync_blocking(published)
    store.delete(_checkpoint_key(job_id))
    return summarize(job_id, published, results, time.perf_counter() - started)


def clear_read_failures(store: ObjectStore, error_files: list[str], read: set[tuple[str, str]]) -> int:
    """Rewrite error files without the READ_FAILED records of objects that have since been read; how many went."""
    cleared = 0
    for key in error_files:
        table = store.get_parquet(key)
        failed = pc.equal(table.column("reason"), str(Reason.READ_FAILED)).to_pylist()
        keep = [not (bad and pair in read) for pair, bad in zip(sources(table), failed, strict=True)]
        if not all(keep):
            cleared += keep.count(False)
            store.put_parquet(key, table.filter(pa.array(keep)))
    return cleared


def summarize(job_id: str, manifest: Manifest, results: list[PartitionResult], seconds: float) -> dict[str, Any]:
    images = sum(r.images for r in results)
    faces = sum(r.faces for r in results)
    reasons: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    for r in results:
        reasons.update(r.reasons)
        stages.update(r.seconds)
    return {
        "job_id": job_id,
        "collection": manifest.name,
        "version": manifest.version,
        "images": images,
        "faces": faces,
        "skipped_faces": sum(r.skipped_faces for r in results),
        "errors": sum(r.errors for r in results),
        "errors_by_reason": dict(sorted(reasons.items())),
        # Objects the source did not give (after the store's retries): a later run of the same job reads them.
        "unread_objects": reasons.get(str(Reason.READ_FAILED), 0),
        "collection_faces": manifest.face_count,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 2) if seconds else 0.0,
        "faces_per_s": round(faces / seconds, 2) if seconds else 0.0,
        "stage_seconds": {k: round(v, 2) for k, v in sorted(stages.items())},
    }
