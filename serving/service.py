"""Service functions behind the API and the CLI: collections, search, compare, detect, faces."""

from __future__ import annotations

import asyncio
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray

from cluster.access import Action, Caller, authorize
from cluster.collection import Collections, Manifest, face_row
from cluster.errors import InvalidRequest, ModelMismatch, NoFaceInProbe
from cluster.index_spec import AUTO, SearchKnobs
from cluster.models.registry import DEFAULT_EMBEDDER, ModelRegistry
from cluster.pipeline.errors import ImageError, Reason
from cluster.pipeline.faces import ImageFaces
from cluster.pipeline.quality import QualityFilter
from cluster.raycluster import ensure_ray, live_shards, shard_actor
from cluster.settings import Settings
from cluster.storage import open_store
from serving.accountable import Accountable, SearchRequest, record_results, search_entry
from serving.batcher import MicroBatcher
from serving.fanout import FanOutResult, Hit, fan_out
from serving.models import EmbeddingModels
from serving.render import LEADS_NOTICE, answer_json, face_json, match_json

# How long a manifest read stays fresh for searches; publishes are visible to the API within this time.
MANIFEST_TTL_S = 1.0
# A new shard actor starts a worker process and reads its snapshot and records before it can answer.
SHARD_STARTUP_TIMEOUT_S = 600.0
# After a reshard the old shard set keeps answering this long, for servers whose manifest is not yet fresh.
RETIRE_AFTER_S = 10 * MANIFEST_TTL_S


def _retire(handles: list[Any]) -> None:
    for handle in handles:
        ray.kill(handle)


class FaceService(Accountable):
    """Collections, faces, search, compare and detect, for the API and the CLI alike (see Accountable)."""

    def __init__(self, settings: Settings, accountable: bool = True) -> None:
        super().__init__(settings, open_store(settings.store, settings), accountable)
        self.collections = Collections(self.store)
        self.registry = ModelRegistry(settings.model_dir)
        self.models = EmbeddingModels(settings, self.registry)
        # Fan-outs only wait on shards: many may be in flight, and none should queue behind a probe's embedding.
        self.fanout_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="facegrid-fanout")
        self._manifests: dict[str, tuple[float, Manifest]] = {}
        self._shards: dict[str, dict[int, Any]] = {}
        self._batchers: dict[str, tuple[dict[int, Any], MicroBatcher]] = {}

    def manifest(self, name: str, fresh: bool = False) -> Manifest:
        cached = self._manifests.get(name)
        if not fresh and cached and time.monotonic() - cached[0] < MANIFEST_TTL_S:
            return cached[1]
        manifest = self.collections.get(name)
        self._manifests[name] = (time.monotonic(), manifest)
        return manifest

    async def shards(self, manifest: Manifest) -> dict[int, Any]:
        """Handles of the collection's shard actors; the first call waits until they have loaded their snapshots."""
        handles = self._shards.get(manifest.name)
        if handles is None or len(handles) != manifest.shard_count:
            ensure_ray()
            count = manifest.shard_count
            handles = {i: shard_actor(self.settings, manifest.name, i, count) for i in range(count)}
            await asyncio.wait_for(
                asyncio.gather(*(h.reload.remote() for h in handles.values())), SHARD_STARTUP_TIMEOUT_S
            )
            self._shards[manifest.name] = handles
        return handles

    def batcher(self, name: str, handles: dict[int, Any]) -> MicroBatcher:
        """The collection's micro-batcher over these shard handles (a new one after a reshard)."""
        held = self._batchers.get(name)
        if held is None or held[0] is not handles:
            serving = self.settings.serving
            timeout = serving.shard_timeout_s

            async def run(queries: np.ndarray, k: int, knobs: SearchKnobs) -> FanOutResult:
                return await fan_out(handles, queries, k, timeout, self.fanout_executor, knobs)

            window_s = serving.batch_window_ms / 1000
            held = (handles, MicroBatcher(run, serving.batch_in_flight, serving.max_batch, window_s))
            self._batchers[name] = held
        return held[1]

    async def rebuild_collection(
        self, caller: Caller, name: str, shards: int | None = None, index: str | None = None, retrain: bool = False
    ) -> dict[str, Any]:
        """Rebuild the snapshots (another index spec, fresh training) or reshard, while searches go on.

        Same shard count: every shard swaps its snapshot atomically on reload. Another count: the new shard set
        loads first, this server then sends searches to it, and the old set is retired RETIRE_AFTER_S later
        (other servers' manifests are at most MANIFEST_TTL_S old).
        """
        entry = {"action": "rebuild-collection", "collection": name, "shards": shards, "index_spec": index}
        async with self.audited(caller, entry):
            authorize(caller, Action.COLLECTIONS_WRITE, name)
            old = self.manifest(name, fresh=True)
            loop = asyncio.get_running_loop()
            # Not on self.executor: audit appends run there, and a rebuild takes minutes.
            new = await loop.run_in_executor(None, self.collections.rebuild, old, shards, index, retrain)
            ensure_ray()
            if new.shard_count == old.shard_count:
                await asyncio.gather(*(s.reload.remote() for s in live_shards(name, new.shard_count)))
                self._manifests[name] = (time.monotonic(), new)
            else:
                await self.shards(new)  # loaded before any search is sent to it
                self._manifests[name] = (time.monotonic(), new)
                await asyncio.sleep(RETIRE_AFTER_S)
                if self.manifest(name, fresh=True).shard_count != old.shard_count:  # not resharded back meanwhile
                    _retire(live_shards(name, old.shard_count))
            entry.update(version=new.version, built_spec=new.built_spec, faces=new.face_count)
        return new.model_dump(exclude={"face_files", "error_files"})

    # --- collections -------------------------------------------------------------------------------------------

    async def create_collection(
        self,
        caller: Caller,
        name: str,
        shards: int,
        max_false_match_rate: float,
        index: str = AUTO,
        model: str | None = None,
    ) -> Manifest:
        model_id = model or DEFAULT_EMBEDDER
        entry = {
            "action": "create-collection",
            "collection": name,
            "max_false_match_rate": max_false_match_rate,
            "model_id": model_id,
        }
        async with self.audited(caller, entry):
            authorize(caller, Action.COLLECTIONS_WRITE)
            return self._create_collection(name, shards, max_false_match_rate, index, model_id)

    def _create_collection(
        self, name: str, shards: int, max_false_match_rate: float, index: str, model_id: str
    ) -> Manifest:
        pinned = self.registry.pin(model_id)
        self.models.floor_similarity(model_id, max_false_match_rate)  # refuses rates the calibration cannot support
        manifest = Manifest(
            name=name,
            **pinned,
            shard_count=shards,
            max_false_match_rate=max_false_match_rate,
            index_spec=index,
        )
        return self.collections.create(manifest)

    def list_collections(self, caller: Caller) -> list[str]:
        authorize(caller, Action.COLLECTIONS_READ)
        return [n for n in self.collections.names() if caller.may(Action.COLLECTIONS_READ, n)]

    def describe_collection(self, caller: Caller, name: str) -> dict[str, Any]:
        authorize(caller, Action.COLLECTIONS_READ, name)
        manifest = self.manifest(name, fresh=True)
        described = manifest.model_dump(exclude={"face_files", "error_files"})
        floor = self.models.floor_similarity(manifest.model_id, manifest.max_false_match_rate)
        described["threshold_floor_similarity"] = round(floor, 6)
        described["errors_by_reason"] = self._error_summary(manifest)
        return described

    def _error_summary(self, manifest: Manifest) -> dict[str, int]:
        reasons = self.collections.errors(manifest).column("reason").to_pylist()
        return {r: reasons.count(r) for r in sorted(set(reasons))}

    async def delete_collection(self, caller: Caller, name: str) -> int:
        async with self.audited(caller, {"action": "delete-collection", "collection": name}) as entry:
            authorize(caller, Action.COLLECTIONS_WRITE, name)
            entry["deleted_faces"] = self.collections.get(name).face_count
            removed = self.collections.delete(name)
        self._manifests.pop(name, None)
        handles = self._shards.pop(name, {})
        await asyncio.gather(*(handle.reload.remote() for handle in handles.values()))
        return removed

    # --- probes ------------------------------------------------------------------------------------------------

    async def probe(self, blob: bytes, max_faces: int | None, model_id: str = DEFAULT_EMBEDDER) -> ImageFaces:
        if len(blob) > self.settings.serving.max_upload_bytes:
            raise ImageError(Reason.IMAGE_TOO_LARGE, f"upload over {self.settings.serving.max_upload_bytes} bytes")
        loop = asyncio.get_running_loop()
        pipeline = self.models.pipeline(model_id)
        result = (await loop.run_in_executor(self.executor, pipeline, [blob], max_faces))[0]
        if isinstance(result, ImageError):
            raise result
        return result

    def _matches(self, hits: list[Hit], manifest: Manifest, threshold: float) -> list[dict[str, Any]]:
        kept = [h for h in hits if h.similarity >= threshold]
        rates = self.models.false_match_rates(manifest.model_id, np.array([h.similarity for h in kept]))
        return [match_json(h, float(r), manifest) for h, r in zip(kept, rates, strict=True)]

    async def search_vectors(
        self, manifest: Manifest, vectors: np.ndarray, k: int, threshold: float, knobs: SearchKnobs | None = None
    ) -> Any:
        handles = await self.shards(manifest)
        result = await self.batcher(manifest.name, handles).search(vectors, k, knobs)
        matches = [self._matches(hits, manifest, threshold) for hits in result.hits]
        return matches, result.missing_shards

    async def search(self, caller: Caller, collection: str, blob: bytes, request: SearchRequest) -> dict[str, Any]:
        """Search with the faces of a probe photo: the largest, or up to `request.max_faces` of them."""
        entry = search_entry("search", collection, request, hashlib.sha256(blob).hexdigest())
        async with self.audited(caller, entry):
            manifest, limits = self._prepare_search(caller, collection, request)
            probe = await self.probe(blob, request.max_faces, manifest.model_id)
            if not probe.faces:
                skipped = [face_json(f) for f in probe.skipped]
                raise NoFaceInProbe("no face was found in the probe image", skipped=skipped)
            vectors = np.stack([f.embedding for f in probe.faces if f.embedding is not None])
            matches, missing = await self.search_vectors(
                manifest, vectors, request.max_results, limits["applied"], request.knobs
            )
            searched = [
                {"searched_face": face_json(f), "matches": m} for f, m in zip(probe.faces, matches, strict=True)
            ]
            result = {
                **answer_json(manifest, limits, searched[0]["matches"], missing, request),
                "searched_face": searched[0]["searched_face"],
                "other_faces": searched[1:],
                "unsearched_faces": [face_json(f) for f in probe.skipped],
            }
            record_results(entry, result, [result, *result["other_faces"]])
        return result

    async def search_vector(
        self, caller: Caller, collection: str, vector: list[float], request: SearchRequest, model_id: str | None = None
    ) -> dict[str, Any]:
        """Search with an embedding made elsewhere by the same model: the collection's model id, when the caller
        names the vector's model, must match (vectors of two models can have the same length and mean nothing)."""
        query = np.asarray(vector, dtype=np.float32)
        entry = search_entry("search-vector", collection, request, hashlib.sha256(query.tobytes()).hexdigest())
        async with self.audited(caller, entry):
            manifest, limits = self._prepare_search(caller, collection, request)
            if model_id is not None and model_id != manifest.model_id:
                raise ModelMismatch(
                    f"the vector is a {model_id} embedding; collection {collection!r} holds {manifest.model_id} "
                    "embeddings, which cannot be compared with it"
                )
            norm = float(np.linalg.norm(query)) if query.ndim == 1 else 0.0
            if query.shape != (manifest.dim,) or not np.isfinite(norm) or norm == 0:
                raise InvalidRequest(f"vector must be {manifest.dim} finite numbers, not all zero")
            matches, missing = await self.search_vectors(
                manifest, (query / norm)[None], request.max_results, limits["applied"], request.knobs
            )
            result = answer_json(manifest, limits, matches[0], missing, request)
            record_results(entry, result, [result])
        return result

    def _prepare_search(
        self, caller: Caller, collection: str, request: SearchRequest
    ) -> tuple[Manifest, dict[str, Any]]:
        """The checks every search passes before any work: role, purpose, case id, limits, collection, floor."""
        authorize(caller, Action.SEARCH, collection)
        self.check_purpose(request.purpose, request.case_id)
        request.check(self.settings.serving.max_results)
        manifest = self.manifest(collection)
        return manifest, self.models.applied_threshold(manifest, request.threshold)

    async def compare(
        self,
        caller: Caller,
        a: bytes,
        b: bytes,
        *,
        purpose: str | None,
        case_id: str | None,
        model: str | None = None,
    ) -> dict[str, Any]:
        probe = hashlib.sha256(a).hexdigest() + ":" + hashlib.sha256(b).hexdigest()
        request = SearchRequest(purpose=purpose, case_id=case_id)
        model_id = model or DEFAULT_EMBEDDER
        async with self.audited(
            caller, {**search_entry("compare", None, request, probe), "model_id": model_id}
        ) as entry:
            result = await self._compare(caller, a, b, purpose, case_id, model_id)
            entry["similarity"] = result["similarity"]
        return result

    async def _compare(
        self, caller: Caller, a: bytes, b: bytes, purpose: str | None, case_id: str | None, model_id: str
    ) -> dict[str, Any]:
        authorize(caller, Action.SEARCH)
        self.check_purpose(purpose, case_id)
        first, second = await asyncio.gather(self.probe(a, 1, model_id), self.probe(b, 1, model_id))
        if not first.faces or not second.faces:
            raise NoFaceInProbe("no face was found in " + ("the first" if not first.faces else "the second") + " image")
        fa, fb = first.faces[0], second.faces[0]
        assert fa.embedding is not None and fb.embedding is not None
        similarity = float(fa.embedding @ fb.embedding)
        return {
            "model_id": model_id,
            "similarity": round(similarity, 6),
            "estimated_false_match_rate": float(self.models.false_match_rates(model_id, similarity)),
            "source_face": face_json(fa),
            "target_face": face_json(fb),
            "purpose": purpose,
            "case_id": case_id,
            "notice": LEADS_NOTICE,
        }

    async def detect(self, caller: Caller, blob: bytes) -> dict[str, Any]:
        authorize(caller, Action.DETECT)
        loop = asyncio.get_running_loop()
        result = (await loop.run_in_executor(self.executor, self.models.pipeline(), [blob], None, QualityFilter.NONE))[
            0
        ]
        if isinstance(result, ImageError):
            raise result
        return {"width": result.width, "height": result.height, "faces": [face_json(f) for f in result.faces]}

    # --- faces -------------------------------------------------------------------------------------------------

    def list_faces(self, caller: Caller, collection: str, limit: int, offset: int) -> dict[str, Any]:
        authorize(caller, Action.FACES_READ, collection)
        if not 1 <= limit <= 1000 or offset < 0:
            raise InvalidRequest("limit must be 1-1000 and offset non-negative")
        manifest = self.manifest(collection, fresh=True)
        columns = ["face_id", "external_image_id", "source_key", "source_etag", "bbox", "confidence", "quality"]
        table = self.collections.faces(manifest, [*columns, "indexed_at"]).sort_by("face_id")
        page = table.slice(offset, limit).to_pylist()
        return {
            "collection": collection,
            "total": table.num_rows,
            "offset": offset,
            "limit": limit,
            "faces": [face_row(r) for r in page],
            "next_offset": offset + limit if offset + limit < table.num_rows else None,
        }

    async def delete_faces(
        self, caller: Caller, collection: str, face_ids: list[str], external_ids: list[str]
    ) -> dict[str, Any]:
        entry = {"action": "delete-faces", "collection": collection, "face_ids": face_ids, "external_ids": external_ids}
        async with self.audited(caller, entry):
            authorize(caller, Action.FACES_DELETE, collection)
            result = await self._delete_faces(collection, face_ids, external_ids)
            entry["deleted_faces"] = result["deleted_faces"]
        return result

    async def _delete_faces(self, collection: str, face_ids: list[str], external_ids: list[str]) -> dict[str, Any]:
        if not face_ids and not external_ids:
            raise InvalidRequest("give face_ids or external_image_ids to delete")
        manifest = self.manifest(collection, fresh=True)
        loop = asyncio.get_running_loop()
        published, erased = await loop.run_in_executor(
            self.executor, self.collections.erase_faces, manifest, set(face_ids), set(external_ids)
        )
        self._manifests.pop(collection, None)
        if erased:
            ensure_ray()
            await asyncio.gather(*(s.reload.remote() for s in live_shards(collection, published.shard_count)))
        unknown = sorted(set(face_ids) - set(erased))
        return {"deleted_faces": erased, "unknown_face_ids": unknown, "collection_faces": published.face_count}
