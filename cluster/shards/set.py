"""The shard hosts of a collection as one object: named by the manifest's shard set, created and loaded before
use, reloaded after a publish, retired after a reshard. Nothing else reaches into shard actors."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.collections.manifest import Manifest
from cluster.collections.records import faiss_id_of, shard_of
from cluster.errors import ShardsUnavailable
from cluster.raycluster import NAMESPACE, cluster_gpus, ensure_ray
from cluster.settings import Settings
from cluster.shards import local
from cluster.shards.host import ShardHost, layout

log = logging.getLogger("facegrid.shards")

# Shards are mostly idle memory: a host reserves a token share of Ray's CPUs. A tenth each made every publish (a task
# of one CPU: rebuilds, erasures, folds) unschedulable, for ever, once 11 hosts lived on a 2-core node (11
# collections, or earlier sets left up); a quarter each kept a reshard's new set pending there. Not zero: Ray places
# an actor that asks for no resources on a random node, soft node affinity or not (ray-project/ray#25360), and a
# shard's two replicas then shared one node.
SHARD_CPUS = 0.001
# Calls a host runs at once: a reload beside searches (see FaceShard); more only queue inside FAISS.
SHARD_CONCURRENCY = 4
# A new shard actor starts a worker process and reads its snapshot and records before it can answer.
SHARD_STARTUP_TIMEOUT_S = 600.0
# How long a job waits for the hosts of a collection it published to reload.
SYNC_TIMEOUT_S = 60.0
# A host's set number in its name (`set_prefix`): collection names hold no '@'.
_SET_NUMBER = re.compile(r"@(\d+):")
# Background sweeps of earlier sets, kept referenced until they end.
_SWEEPS: set[asyncio.Task[None]] = set()
# What a call to a host retired meanwhile raises: an actor's death, or a local host's closing.
RETIRED = (ray.exceptions.RayActorError, local.HostRetired)
# How long a server's manifest read stays fresh for searches; publishes reach searches within this time.
MANIFEST_TTL_S = 1.0


def set_prefix(collection: str, manifest: Manifest) -> str:
    # Named by the shard set (the version that set the count): after a reshard the old set answers until the new
    # one has loaded, and a later reshard back to the same count never meets the retired set's names.
    return f"shards:{collection}/{manifest.shard_count}@{manifest.shard_set}:"


def host_name(collection: str, manifest: Manifest, host: int, hosts: int) -> str:
    """Host `host` of a layout of `hosts` (its shards follow from the manifest's counts: `layout`)."""
    return f"{set_prefix(collection, manifest)}{host}of{hosts}/{manifest.replicas}"


def alive_nodes() -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


def cluster_nodes() -> int:
    """The nodes of the Ray cluster this process has joined (joining or starting one first)."""
    ensure_ray()
    return len(alive_nodes())


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

    @property
    def scope(self) -> str:
        """Whose hosts held in this process are this set's (cluster/shards/local.py): this store's, on this node."""
        ensure_ray()
        return f"{self.settings.store}|{ray.get_runtime_context().get_node_id()}"

    def _create(self, manifest: Manifest) -> dict[int, list[Any]]:
        """The named shard hosts of the set, created where missing (a host per node, holding its replicas of the
        shards: `layout`); Ray restarts one from the published snapshots if it dies (elsewhere if its node is
        gone). Returns each shard's replicas: handles of the hosts holding it, the same handle for all of a
        host's shards."""
        ensure_ray()
        nodes = alive_nodes()
        hosts = layout(manifest.shard_count, manifest.replicas, len(nodes))
        here = ray.get_runtime_context().get_node_id()
        in_process = self.settings.serving.local_shards and manifest.replicas == 1
        scope = self.scope
        options: dict[str, Any] = {
            "namespace": NAMESPACE,
            "get_if_exists": True,
            # Shards are a service of the cluster: they outlive the process that first asked for them.
            "lifetime": "detached",
            "max_restarts": -1,
            "max_task_retries": 3,
            "max_concurrency": SHARD_CONCURRENCY,
            **shard_options(cluster_gpus(), len(hosts)),
        }
        remote = ray.remote(ShardHost)
        held: dict[int, list[Any]] = {i: [] for i in range(manifest.shard_count)}
        for host, shards in enumerate(hosts):
            node = nodes[host % len(nodes)] if nodes else here
            name = host_name(self.collection, manifest, host, len(hosts))
            args = (self.settings, self.collection, sorted(set(shards)), manifest.shard_count, manifest.shard_set)
            handle: Any
            if in_process and node == here:
                handle = local.host(scope, name, functools.partial(ShardHost, *args))
            else:
                placed = dict(options)
                if nodes:
                    placed["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
                handle = remote.options(name=name, **placed).remote(*args)
            for shard in shards:
                held[shard].append(handle)
        return held

    async def handles(self, manifest: Manifest) -> dict[int, list[Any]]:
        """Every replica's handle, by shard, of the set the manifest names; the first call waits until they have
        loaded. A change of the replica count starts the new layout's hosts (and retires the old ones) first."""
        key = _key(manifest)
        held = self._handles.get(key)
        if held is None or len(held[0]) != manifest.replicas:
            before = held
            if held is None:  # a set new to this server: whoever resharded, earlier sets here are retired
                self._retire_older_later(manifest)
            held = self._create(manifest)
            every = _hosts(held)
            await asyncio.wait_for(asyncio.gather(*(h.reload.remote() for h in every)), SHARD_STARTUP_TIMEOUT_S)
            if before is not None:
                self._retire_others(manifest, held)
            # Only the manifest's current set is kept: handles of a set retired elsewhere would be dead ones.
            self._handles = {key: held}
        behind = [h for h in _hosts(held) if isinstance(h, local.LocalHost) and h.behind(manifest.version)]
        if behind:  # a publish made elsewhere (a job, another server) that this process's hosts have not polled yet
            await _reload(behind)
        return held

    def live(self, manifest: Manifest) -> list[Any]:
        """The set's hosts that exist in the cluster, of every layout (none are created)."""
        return [handle for _, handle in self._named(manifest)]

    def ask_all(self, manifest: Manifest, method: str, *args: Any) -> list[Any]:
        """Every live host of the set answers `method` (blocking; for benchmarks and tests): actors and this
        process's own."""
        return [local.result(ref) for ref in [getattr(h, method).remote(*args) for h in self.live(manifest)]]

    def _named(self, manifest: Manifest) -> list[tuple[str, Any]]:
        return _named_actors(self.scope, set_prefix(self.collection, manifest))

    def _retire_others(self, manifest: Manifest, held: dict[int, list[Any]]) -> None:
        """Hosts of the set's earlier layouts (another replica count), once the current one has loaded."""
        hosts = len(_hosts(held))
        current = {host_name(self.collection, manifest, h, hosts) for h in range(hosts)}
        scope = self.scope
        for name, handle in self._named(manifest):
            if name not in current:
                _stop(scope, name, handle)

    async def sync(self, old: Manifest, new: Manifest, ready: Callable[[Manifest], Any] | None = None) -> None:
        """Make a publish visible, then call `ready` (the caller starts routing to it): the same set reloads; a
        new set loads first, and the old one is retired `serving.retire_after_s` later (other servers' manifests
        are at most MANIFEST_TTL_S old). A replaced set never becomes current again: every reshard names a new one."""
        if _key(old) == _key(new):
            await _reload(self.live(new))
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
        """A live-log segment with faces of these shards was written: this server's hosts of those shards read it
        now (every other server's within a poll)."""
        handles = self._handles.get(_key(manifest))
        if handles is None:
            return  # no search has started this server's shards yet: they read the log when they start
        wanted = {s: handles[s] for s in shards if s in handles}
        await asyncio.gather(*(h.add_segment.remote(key, etag, sorted(shards)) for h in _hosts(wanted)))

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
            *(self._any_replica(handles[s], method, s, ids, timeout) for s, ids in by_shard.items())
        )
        return {f"{faiss_id:016x}": vector for answer in answers for faiss_id, vector in answer.items()}

    async def _any_replica(
        self, replicas: list[Any], method: str, shard: int, ids: list[int], timeout: float
    ) -> dict[int, Any]:
        """The first replica that answers, tried in turn within the timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        for replica in replicas:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                answer: dict[int, Any] = await asyncio.wait_for(getattr(replica, method).remote(shard, ids), left)
                return answer
            except (TimeoutError, ray.exceptions.RayActorError) as exc:
                log.warning("a replica of %s did not answer %s: %r", self.collection, method, exc)
        raise ShardsUnavailable(f"a shard of {self.collection!r} holding these faces did not answer; try again")

    def sync_blocking(self, new: Manifest, timeout_s: float = SYNC_TIMEOUT_S) -> int:
        """For jobs (no event loop, any machine of the cluster): reload the live hosts of the published set, waiting
        at most `timeout_s`; the number that had not answered by then. A host still starting (waiting for its
        share of a CPU, say) reads the published version when it starts, and servers follow within a manifest
        read: a job never waits on one for ever."""
        if not ray.is_initialized():
            return 0
        refs = [h.reload.remote() for h in self.live(new)]
        if not refs:
            return 0
        done, late = local.wait(refs, len(refs), timeout_s)
        for ref in done:
            with contextlib.suppress(*RETIRED):  # retired meanwhile: nothing to show
                local.result(ref)
        if late:
            log.warning("%d hosts of %s did not reload within %.0f s", len(late), self.collection, timeout_s)
        return len(late)

    def _retire_older_later(self, manifest: Manifest) -> None:
        """`retire_older`, `serving.retire_after_s` from now (searches begun on an earlier set finish first). A
        reshard made by another server (or two in a row) leaves this cluster's hosts of the earlier sets to this
        server: left up, each held its share of a CPU until new work could not be scheduled at all."""

        async def later() -> None:
            await asyncio.sleep(self.settings.serving.retire_after_s)
            try:
                await asyncio.to_thread(self.retire_older, manifest)
            except Exception:  # a later sweep, or the set's own retirement, gets them
                log.warning("retiring earlier shard sets of %s failed", self.collection, exc_info=True)

        task = asyncio.get_running_loop().create_task(later())
        _SWEEPS.add(task)
        task.add_done_callback(_SWEEPS.discard)

    def retire_older(self, manifest: Manifest) -> None:
        """Every host of this collection's sets older than the manifest's (set numbers only grow)."""
        scope = self.scope
        for name, handle in _named_actors(scope, f"shards:{self.collection}/"):
            found = _SET_NUMBER.search(name)
            if found is not None and int(found.group(1)) < manifest.shard_set:
                _stop(scope, name, handle)
                log.info("retired %s (the collection's set is now %s)", name, manifest.shard_set)

    def retire(self, manifest: Manifest) -> None:
        scope = self.scope
        for name, handle in self._named(manifest):
            _stop(scope, name, handle)
        self._handles.pop(_key(manifest), None)
        log.info("retired shard set %s of %s", _key(manifest), self.collection)

    async def drop(self) -> None:
        """The collection was deleted: every host of it in this cluster (any set, any layout, whoever started it)
        is stopped, and its memory with it; the handles go."""
        self._handles.clear()
        if not ray.is_initialized():
            return  # no cluster joined here (the CLI, say): no host of this process's to stop, none to start Ray for
        scope = await asyncio.to_thread(lambda: self.scope)
        for name, handle in await asyncio.to_thread(_named_actors, scope, f"shards:{self.collection}/"):
            _stop(scope, name, handle)


async def _reload(hosts: list[Any]) -> None:
    """Every host loads the latest version. A host retired meanwhile (by another server of this cluster, after a
    reshard or a replica change) has nothing to show; any other failure is raised."""
    answers = await asyncio.gather(*(h.reload.remote() for h in hosts), return_exceptions=True)
    for answer in answers:
        if isinstance(answer, BaseException) and not isinstance(answer, RETIRED):
            raise answer


def _named_actors(scope: str, prefix: str) -> list[tuple[str, Any]]:
    """(name, handle) of the hosts whose names start with `prefix`: this process's own (`local`), then the
    cluster's actors, in name order."""
    ensure_ray()
    found: list[tuple[str, Any]] = list(local.named(scope, prefix))
    for name in sorted(ray.util.list_named_actors()):
        if name.startswith(prefix):
            try:
                found.append((name, ray.get_actor(name, namespace=NAMESPACE)))
            except ValueError:
                continue  # gone since the listing
    return found


def _stop(scope: str, name: str, handle: Any) -> None:
    if isinstance(handle, local.LocalHost):
        local.close(scope, name)
    else:
        ray.kill(handle)


def _hosts(handles: dict[int, list[Any]]) -> list[Any]:
    """Each host once, in the order the shards first name them."""
    seen: dict[int, Any] = {}
    for replicas in handles.values():
        for handle in replicas:
            seen.setdefault(id(handle), handle)
    return list(seen.values())
