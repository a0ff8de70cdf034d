"""Shards on the server's own node held in its process: searched without a Ray call, caught up with a publish
made elsewhere before a search reads it, bounded by the shard timeout like any host, retired with their set;
replicas stay actors."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import ray

from cluster.collections.manifest import Collections, Manifest
from cluster.collections.publish import Publisher
from cluster.settings import Settings
from cluster.shards import local
from cluster.shards.set import ShardSet
from cluster.storage import LocalStore
from serving.fanout import fan_out
from tests.factories import clustered_vectors, records


def _collection(tmp_path: Path, name: str, vectors_at: int = 0) -> tuple[Settings, Collections, Manifest]:
    settings = Settings(store=str(tmp_path / "store"), shard_cache=tmp_path / "cache")
    collections = Collections(LocalStore(tmp_path / "store"))
    manifest = collections.create(
        Manifest(name=name, model_id="dlib-resnet-v1", model_sha256="x", shard_count=2, index_spec="Flat")
    )
    return settings, collections, manifest


def test_a_servers_own_shards_are_searched_in_its_process_and_follow_publishes(tmp_path: Path, local_ray: None) -> None:
    settings, collections, manifest = _collection(tmp_path, "l")
    vectors, _ = clustered_vectors(300, 128)
    collections.store.put_parquet("collections/l/faces/a.parquet", records(vectors[:200]))
    first = Publisher(collections).publish(manifest, ["collections/l/faces/a.parquet"])
    shards = ShardSet(settings, "l")
    handles = asyncio.run(shards.handles(first))
    hosts = {id(h): h for replicas in handles.values() for h in replicas}
    assert len(hosts) == 1 and all(isinstance(h, local.LocalHost) for h in hosts.values())
    assert not [n for n in ray.util.list_named_actors() if n.startswith("shards:l/")]  # no actor started
    answer = asyncio.run(fan_out(handles, vectors[:3], 1, timeout=10.0))
    assert not answer.partial and [hits[0].faiss_id for hits in answer.hits] == [1, 2, 3]

    # A publish made elsewhere (a job, another server): the next search that reads its manifest finds its faces,
    # without waiting for the shards' poll.
    collections.store.put_parquet("collections/l/faces/b.parquet", records(vectors[200:], 200))
    grown = Publisher(collections).publish(first, ["collections/l/faces/b.parquet"])
    handles = asyncio.run(shards.handles(grown))
    answer = asyncio.run(fan_out(handles, vectors[250:252], 1, timeout=10.0))
    assert [hits[0].faiss_id for hits in answer.hits] == [251, 252]
    assert sum(info["faces"] for info in shards.ask_all(grown, "info")) == 300

    asyncio.run(shards.drop())
    assert not local.named(shards.scope, "shards:l/")
    follows = [t for t in threading.enumerate() if t.name == "follow"]
    time.sleep(0.8)  # a poll: the retired shards' threads have ended
    assert not [t for t in follows if t.is_alive()]


def test_a_local_host_past_the_timeout_is_a_missing_shard(tmp_path: Path, local_ray: None) -> None:
    settings, collections, manifest = _collection(tmp_path, "m")
    vectors, _ = clustered_vectors(100, 128)
    collections.store.put_parquet("collections/m/faces/a.parquet", records(vectors))
    published = Publisher(collections).publish(manifest, ["collections/m/faces/a.parquet"])
    shards = ShardSet(settings, "m")
    handles = asyncio.run(shards.handles(published))
    host = handles[0][0]
    real = host.call

    def stuck(method: str, *args: object) -> object:
        if method == "search":
            time.sleep(3.0)
        return real(method, *args)

    host.call = stuck
    began = time.monotonic()
    answer = asyncio.run(fan_out(handles, vectors[:2], 1, timeout=0.5))
    assert answer.partial and answer.missing_shards == [0, 1] and time.monotonic() - began < 2.0
    host.call = real
    asyncio.run(shards.drop())


def test_replicas_stay_actors_and_local_shards_can_be_switched_off(tmp_path: Path, local_ray: None) -> None:
    settings, collections, manifest = _collection(tmp_path, "n")
    vectors, _ = clustered_vectors(100, 128)
    collections.store.put_parquet("collections/n/faces/a.parquet", records(vectors))
    published = Publisher(collections).publish(manifest, ["collections/n/faces/a.parquet"])
    twice = Publisher(collections).amend("n", lambda m: setattr(m, "replicas", 2))[1]
    for wanted, setting in ((twice, True), (published, False)):  # two replicas; one replica with the switch off
        settings.serving.local_shards = setting
        shards = ShardSet(settings, "n")
        handles = asyncio.run(shards.handles(wanted))
        assert not any(isinstance(h, local.LocalHost) for replicas in handles.values() for h in replicas)
        answer = asyncio.run(fan_out(handles, vectors[:2], 1, timeout=10.0))
        assert [hits[0].faiss_id for hits in answer.hits] == [1, 2]
        asyncio.run(shards.drop())
