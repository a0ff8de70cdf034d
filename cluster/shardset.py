"""The shard actors of a collection as one object: named by the manifest's shard set, created and loaded before
use, reloaded after a publish, retired after a reshard. Nothing else reaches into shard actors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.errors import ShardsUnavailable
from cluster.manifest import MAX_REPLICAS, Manifest
from cluster.raycluster import NAMESPACE, cluster_gpus, ensure_ray
from cluster.records import faiss_id_of, shard_of
from cluster.settings import Settings
from cluster.shard import FaceShard

log = logging.getLogger("facegrid.shards")

# Shards are mostly idle memory. A tenth of a CPU each lets an old and a new shard set live side by side during a
# reshard on a 2-core machine (at a quarter each the new set stayed pending there).
SHARD_CPUS = 0.1
# A reload runs beside searches (see FaceShard); more threads than this only queue inside FAISS.
SHARD_CONCURRENCY = 4
# A new shard actor starts a worker process and reads its snapshot and records before it can answer.
SHARD_STARTUP_TIMEOUT_S = 600.0
# How long a server's manifest read stays fresh for searches; publishes reach searches within this time.
MANIFEST_TTL_S = 1.0


def shard_name(collection: str, shard: int, manifest: Manifest, replica: int = 0) -> str:
    # Named by the shard set (the version that set the count): after a reshard the old set answers until the new
    # one has loaded, and a later reshard back to the same count never meets the retired set's names.
    name = f"shard:{collection}:{shard}/{manifest.shard_count}@{manifest.shard_set}"
    return name if replica == 0 else f"{name}#{replica}"


def replica_nodes(shard: int, replicas: int, nodes: list[str]) -> list[str | None]:
    """The node each replica of a shard is placed on: different ones while the cluster has enough, shards
    rotated over the nodes. Soft: Ray restarts a replica whose node is lost on another one."""
    if not nodes:
        return [None] * replicas
    return [nodes[(shard + replica) % len(nodes)] for replica in range(replicas)]


def alive_nodes() -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


def shard_options(gpus: int, shard_count: int) -> dict[str, Any]:
    """A share of a GPU per shard where the cluster has GPUs (FAISS then finds one in the actor), else CPU only."""
    options: dict[str, Any] = {"num_cpus": SHARD_CPUS}
    if gpus > 0:
        options["num_gpus"] = min(1.0, gpus / shard_count)
    return options


def _key(manifest: Manifest) -> tuple[int, int]:
    return manifest.shard_set, manifest.shard_count


class ShardSet:
    """One collection's shard actors on the Ray cluster this process has joined."""

    def __init__(self, settings: Settings, collection: str) -> None:
        self.settings = settings
        self.collection = collection
        self._handles: dict[tuple[int, int], dict[int, list[Any]]] = {}

    def _create(self, manifest: Manifest) -> dict[int, list[Any]]:
        """The named shard actors, every replica of every shard, created where missing; Ray restarts one from the
        published snapshot if it dies (on another node if its node is gone)."""
        ensure_ray()
        options: dict[str, Any] = {
            "namespace": NAMESPACE,
            "get_if_exists": True,
            # Shards are a service of the cluster: they outlive the process that first asked for them.
            "lifetime": "detached",
            "max_restarts": -1,
            "max_task_retries": 3,
            "max_concurrency": SHARD_CONCURRENCY,
            **shard_options(cluster_gpus(), manifest.shard_count),
        }
        remote = ray.remote(FaceShard)
        nodes = alive_nodes()
        held: dict[int, list[Any]] = {}
        for i in range(manifest.shard_count):
            held[i] = []
            for replica, node in enumerate(replica_nodes(i, manifest.replicas, nodes)):
                placed = dict(options)
                if node is not None:
                    placed["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
                name = shard_name(self.collection, i, manifest, replica)
                held[i].append(
                    remote.options(name=name, **placed).remote(
                        self.settings, self.collection, i, manifest.shard_count, manifest.shard_set
                    )
                )
        return held

    async def handles(self, manifest: Manifest) -> dict[int, list[Any]]:
        """Every replica's handle, by shard, of the set the manifest names; the first call waits until they have
        loaded. A change of the replica count starts the new replicas (and retires surplus ones) first."""
        key = _key(manifest)
        held = self._handles.get(key)
        if held is None or len(held[0]) != manifest.replicas:
            before = held
            held = self._create(manifest)
            every = [h for replicas in held.values() for h in replicas]
            await asyncio.wait_for(asyncio.gather(*(h.reload.remote() for h in every)), SHARD_STARTUP_TIMEOUT_S)
            if before is not None:
                self._retire_replicas(manifest, len(before[0]))
            # Only the manifest's current set is kept: handles of a set retired elsewhere would be dead ones.
            self._handles = {key: held}
        return held

    def live(self, manifest: Manifest, replicas: int | None = None) -> list[Any]:
        """The set's actors that exist in the cluster, every replica (none are created)."""
        ensure_ray()
        found = []
        for shard in range(manifest.shard_count):
            for replica in range(replicas or manifest.replicas):
                try:
                    name = shard_name(self.collection, shard, manifest, replica)
                    found.append(ray.get_actor(name, namespace=NAMESPACE))
                except ValueError:
                    continue
        return found

    def _retire_replicas(self, manifest: Manifest, held: int) -> None:
        """Replicas past the manifest's count, of a set that stays current."""
        for shard in range(manifest.shard_count):
            for replica in range(manifest.replicas, held):
                try:
                    ray.kill(ray.get_actor(shard_name(self.collection, shard, manifest, replica), namespace=NAMESPACE))
                except ValueError:
                    continue

    async def sync(self, old: Manifest, new: Manifest, ready: Callable[[Manifest], Any] | None = None) -> None:
        """Make a publish visible, then call `ready` (the caller starts routing to it): the same set reloads; a
        new set loads first, and the old one is retired `serving.retire_after_s` later (other servers' manifests
        are at most MANIFEST_TTL_S old). A replaced set never becomes current again: every reshard names a new one."""
        if _key(old) == _key(new):
            await asyncio.gather(*(s.reload.remote() for s in self.live(new)))
            if old.replicas != new.replicas:
                await self.handles(new)
        else:
            await self.handles(new)
        if ready is not None:
            ready(new)
        if _key(old) != _key(new):
            await asyncio.sleep(self.settings.serving.retire_after_s)
            self.retire(old)

    async def added(self, manifest: Manifest, key: str, etag: str, shards: set[int]) -> None:
        """A live-log segment with faces of these shards was written: this server's actors of those shards read it
        now (every other server's within a poll)."""
        handles = self._handles.get(_key(manifest))
        if handles is None:
            return  # no search has started this server's shards yet: they read the log when they start
        await asyncio.gather(*(h.add_segment.remote(key, etag) for s in shards if s in handles for h in handles[s]))

    async def vectors(self, manifest: Manifest, face_ids: list[str]) -> dict[str, np.ndarray]:
        """The stored vectors of these faces, each asked of the one shard that holds it; faces no shard holds
        (never indexed, or erased) are absent. A shard that does not answer raises ShardsUnavailable."""
        return await self._ask(manifest, face_ids, "vectors")

    async def records(self, manifest: Manifest, face_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The records (face id, source, box) of these faces, as `vectors` finds them."""
        return await self._ask(manifest, face_ids, "records")

    async def _ask(self, manifest: Manifest, face_ids: list[str], method: str) -> dict[str, Any]:
        by_shard: dict[int, list[int]] = {}
        for face_id in face_ids:
            faiss_id = faiss_id_of(face_id)
            if faiss_id is not None:
                by_shard.setdefault(int(shard_of(np.array([faiss_id]), manifest.shard_count)[0]), []).append(faiss_id)
        if not by_shard:
            return {}
        handles = await self.handles(manifest)
        timeout = self.settings.serving.shard_timeout_s
        answers = await asyncio.gather(
            *(self._any_replica(handles[s], method, ids, timeout) for s, ids in by_shard.items())
        )
        return {f"{faiss_id:016x}": vector for answer in answers for faiss_id, vector in answer.items()}

    async def _any_replica(self, replicas: list[Any], method: str, ids: list[int], timeout: float) -> dict[int, Any]:
        """The first replica that answers, tried in turn within the timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        for replica in replicas:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                answer: dict[int, Any] = await asyncio.wait_for(getattr(replica, method).remote(ids), left)
                return answer
            except (TimeoutError, ray.exceptions.RayActorError) as exc:
                log.warning("a replica of %s did not answer %s: %r", self.collection, method, exc)
        raise ShardsUnavailable(f"a shard of {self.collection!r} holding these faces did not answer; try again")

    def sync_blocking(self, new: Manifest) -> None:
        """For jobs (no event loop, any machine of the cluster): reload the live actors of the published set."""
        if ray.is_initialized():
            ray.get([s.reload.remote() for s in self.live(new)])

    def retire(self, manifest: Manifest) -> None:
        for handle in self.live(manifest, MAX_REPLICAS):
            ray.kill(handle)
        self._handles.pop(_key(manifest), None)
        log.info("retired shard set %s of %s", _key(manifest), self.collection)

    async def drop(self) -> None:
        """The collection was deleted: live actors unload (they find no manifest) and the handles go."""
        for held in self._handles.values():
            await asyncio.gather(*(h.reload.remote() for replicas in held.values() for h in replicas))
        self._handles.clear()
