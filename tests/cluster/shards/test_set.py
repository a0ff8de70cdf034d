"""Shard sets: named by the manifest's shard set, so a reshard back to an old count never meets retired actors;
a GPU share only where the cluster has GPUs; a reshard starts a new set, other publishes keep it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from cluster.collections.manifest import Collections, Manifest
from cluster.collections.publish import Publisher
from cluster.settings import Settings
from cluster.shards.host import layout
from cluster.shards.set import SHARD_CPUS, ShardSet, set_prefix, shard_options
from cluster.storage import LocalStore
from serving.fanout import fan_out
from tests.factories import clustered_vectors, records


@pytest.mark.parametrize(("gpus", "shards", "share"), [(0, 4, None), (1, 4, 0.25), (2, 4, 0.5), (8, 4, 1.0)])
def test_shards_ask_for_a_gpu_share_only_where_the_cluster_has_gpus(gpus: int, shards: int, share: float) -> None:
    options = shard_options(gpus, shards)
    assert options["num_cpus"] == SHARD_CPUS and options.get("num_gpus") == share


def test_a_reshard_names_a_new_set_and_other_publishes_keep_it(tmp_path: Path) -> None:
    collections = Collections(LocalStore(tmp_path))
    publisher = Publisher(collections)
    manifest = collections.create(Manifest(name="s", model_id="dlib-resnet-v1", model_sha256="x", shard_count=4))
    vectors, _ = clustered_vectors(200, 128)
    collections.store.put_parquet("collections/s/faces/a.parquet", records(vectors[:100]))
    collections.store.put_parquet("collections/s/faces/b.parquet", records(vectors[100:], 100))
    first = publisher.publish(manifest, ["collections/s/faces/a.parquet"])
    grown = publisher.publish(first, ["collections/s/faces/b.parquet"])
    assert first.shard_set == grown.shard_set == manifest.shard_set  # same actors, reloaded
    six = publisher.rebuild(grown, shard_count=6)
    four = publisher.rebuild(six, shard_count=4)
    retrained = publisher.rebuild(four, retrain=True)
    assert len({grown.shard_set, six.shard_set, four.shard_set}) == 3 and retrained.shard_set == four.shard_set
    names = [set_prefix("s", m) for m in (grown, six, four)]
    assert len(set(names)) == 3 and names[0].startswith("shards:s/4@") and names[2].startswith("shards:s/4@")
    assert four.face_count == 200 and len(four.shards) == 4


@pytest.mark.parametrize(
    ("shards", "replicas", "nodes"), [(4, 1, 1), (4, 2, 1), (4, 2, 3), (4, 1, 3), (2, 3, 1), (1, 2, 5), (6, 2, 8)]
)
def test_a_layout_holds_every_replica_once_on_different_hosts(shards: int, replicas: int, nodes: int) -> None:
    hosts = layout(shards, replicas, nodes)
    assert len(hosts) == max(replicas, min(shards, nodes)) and all(hosts)  # a host per node, none empty
    for shard in range(shards):
        holding = [h for h, held in enumerate(hosts) if shard in held]
        assert len(holding) == replicas  # each replica on a host of its own
    assert layout(4, 1, 1) == [[0, 1, 2, 3]]  # one node: one call answers all four shards


def test_a_replica_count_change_loads_the_new_layout_and_retires_the_old(tmp_path: Path, local_ray: None) -> None:
    """1 -> 2 -> 1 replicas on one node: two hosts, each holding every shard, then one again; every face once
    per replica, searches answered by the current hosts throughout."""
    settings = Settings(store=str(tmp_path / "store"), shard_cache=tmp_path / "cache")
    collections = Collections(LocalStore(tmp_path / "store"))
    manifest = collections.create(
        Manifest(name="r", model_id="dlib-resnet-v1", model_sha256="x", shard_count=2, index_spec="Flat")
    )
    vectors, _ = clustered_vectors(300, 128)
    collections.store.put_parquet("collections/r/faces/a.parquet", records(vectors))
    manifest = Publisher(collections).publish(manifest, ["collections/r/faces/a.parquet"])
    shards = ShardSet(settings, "r")

    def replicas(count: int) -> list[dict[str, Any]]:
        old, new = Publisher(collections).amend("r", lambda m: setattr(m, "replicas", count))
        asyncio.run(shards.sync(old, new))
        handles = asyncio.run(shards.handles(new))
        assert all(len(held) == count for held in handles.values())
        answer = asyncio.run(fan_out(handles, vectors[:3], 1, timeout=10.0))
        assert not answer.partial and [hits[0].faiss_id for hits in answer.hits] == [1, 2, 3]
        return shards.ask_all(new, "info")

    asyncio.run(shards.handles(manifest))
    for count in (2, 1):
        hosts = replicas(count)
        assert len(hosts) == count  # the earlier layout's hosts are gone
        assert all(sorted(h["shards"]) == [0, 1] for h in hosts)  # one node: each host holds every shard
        assert sum(h["faces"] for h in hosts) == count * 300
    collections.delete("r")
    asyncio.run(shards.drop())  # as a collection's deletion does: every host of it goes, and its memory
    deadline = time.monotonic() + 30
    while [n for n in ray.util.list_named_actors() if n.startswith("shards:r/")]:
        assert time.monotonic() < deadline, "the deleted collection's hosts are still up"
        time.sleep(0.2)


def test_a_server_that_did_not_reshard_retires_the_earlier_sets_it_holds(tmp_path: Path, local_ray: None) -> None:
    """Two reshards made elsewhere (another server's publishes): this server's hosts of both earlier sets go once
    it serves the new one; left up, each held a share of a CPU until a rebuild's work could not be scheduled."""
    settings = Settings(store=str(tmp_path / "store"), shard_cache=tmp_path / "cache")
    settings.serving.retire_after_s = 0.0
    settings.serving.local_shards = False  # the hosts of other servers: actors
    collections = Collections(LocalStore(tmp_path / "store"))
    publisher = Publisher(collections)
    manifest = collections.create(
        Manifest(name="t", model_id="dlib-resnet-v1", model_sha256="x", shard_count=2, index_spec="Flat")
    )
    vectors, _ = clustered_vectors(100, 128)
    collections.store.put_parquet("collections/t/faces/a.parquet", records(vectors))
    first = publisher.publish(manifest, ["collections/t/faces/a.parquet"])
    here = ShardSet(settings, "t")
    asyncio.run(here.handles(first))
    three = publisher.rebuild(first, shard_count=3)
    asyncio.run(here.handles(three))  # searches met the second set: it starts here, the first stays a while
    four = publisher.rebuild(three, shard_count=4)

    async def serve_latest() -> None:
        await here.handles(four)
        await asyncio.sleep(0.5)  # the sweep, retire_after_s (0 here) after the new set started

    asyncio.run(serve_latest())
    deadline = time.monotonic() + 30
    while (held := sorted({n.split(":")[1] for n in ray.util.list_named_actors() if n.startswith("shards:t/")})) != [
        f"t/4@{four.shard_set}"
    ]:
        assert time.monotonic() < deadline, held
        time.sleep(0.2)
    asyncio.run(here.drop())


def test_a_job_does_not_wait_for_ever_on_a_host_that_cannot_start(tmp_path: Path, local_ray: None) -> None:
    """Every CPU held (two index jobs' embedders, say): a host started by a search cannot get its share, so the
    job's reload after its publish answers within its bound, naming one host late; once CPUs are free the host
    starts and serves the published version (with two such jobs it used to wait for ever)."""
    settings = Settings(store=str(tmp_path / "store"), shard_cache=tmp_path / "cache")
    settings.serving.local_shards = False  # hosts that wait for a CPU share: actors
    collections = Collections(LocalStore(tmp_path / "store"))
    manifest = collections.create(
        Manifest(name="w", model_id="dlib-resnet-v1", model_sha256="x", shard_count=2, index_spec="Flat")
    )
    vectors, _ = clustered_vectors(100, 128)
    collections.store.put_parquet("collections/w/faces/a.parquet", records(vectors))
    hogs = [Hog.remote() for _ in range(2)]  # type: ignore[attr-defined]
    ray.get([hog.ready.remote() for hog in hogs])
    shards = ShardSet(settings, "w")
    shards._create(manifest)  # a search's start of the set, pending for its CPU share
    published = Publisher(collections).publish(manifest, ["collections/w/faces/a.parquet"])
    began = time.monotonic()
    assert shards.sync_blocking(published, timeout_s=2.0) == 1
    assert time.monotonic() - began < 10
    for hog in hogs:
        ray.kill(hog)
    handles = asyncio.run(shards.handles(published))
    answer = asyncio.run(fan_out(handles, vectors[:2], 1, timeout=30.0))
    assert not answer.partial and [hits[0].faiss_id for hits in answer.hits] == [1, 2]
    asyncio.run(shards.drop())


@ray.remote(num_cpus=1)
class Hog:
    def ready(self) -> bool:
        return True
