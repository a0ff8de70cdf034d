"""Growth: a publish that adds records extends the shards (IVF keeps its training); re-indexed faces replace
their old selves; the result equals a rebuild from every record; erasure still rebuilds for real."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cluster.collections.manifest import Collections, Manifest
from cluster.collections.publish import Publisher
from cluster.collections.snapshot import RECORDS_FILE, Placement, ShardSnapshot
from cluster.errors import CollectionChanged
from cluster.storage import LocalStore, ObjectNotFound
from tests.factories import clustered_vectors, records


def _flat_collection(tmp_path: Path, name: str) -> tuple[Collections, Publisher, Manifest]:
    """A new two-shard Flat collection in a folder store, and a publisher for it."""
    collections = Collections(LocalStore(tmp_path / "store"))
    manifest = collections.create(
        Manifest(name=name, model_id="dlib-resnet-v1", model_sha256="s", shard_count=2, index_spec="Flat")
    )
    return collections, Publisher(collections), manifest


def _snapshots(collections: Collections, manifest: Manifest, tmp: Path) -> list[ShardSnapshot]:
    return [
        ShardSnapshot.load(collections.store, manifest.shards[str(s)], manifest.built_spec or "", tmp, Placement())
        for s in range(manifest.shard_count)
    ]


def _search(snapshots: list[ShardSnapshot], probes: np.ndarray) -> list[list[int]]:
    found = []
    for probe in probes:
        hits = []
        for snapshot in snapshots:
            scores, ids, _ = snapshot.search(probe[None], 5)
            hits += list(zip(scores[0].tolist(), ids[0].tolist(), strict=True))
        found.append([i for _, i in sorted(hits, reverse=True)[:5]])
    return found


@pytest.mark.parametrize("spec", ["IVF32,SQ8", "Flat", "HNSW16"])
def test_adding_extends_and_equals_a_rebuild(spec: str, tmp_path: Path) -> None:
    collections = Collections(LocalStore(tmp_path / "store"))
    publisher = Publisher(collections)
    manifest = collections.create(
        Manifest(name="grow", model_id="dlib-resnet-v1", model_sha256="s", shard_count=2, index_spec=spec)
    )
    vectors, _ = clustered_vectors(3100, 128, seed=5)
    collections.store.put_parquet("collections/grow/faces/a.parquet", records(vectors[:2000], 0))
    first = publisher.publish(manifest, ["collections/grow/faces/a.parquet"])
    assert first.face_count == 2000 and first.built_spec == spec

    # 1000 new faces, and faces 1..100 indexed again with other vectors (a later run over changed photos).
    again = records(vectors[2000:2100], 0)
    later = pa.array([datetime.now(UTC) + timedelta(minutes=1)] * 100, again.schema.field("indexed_at").type)
    again = again.set_column(again.schema.get_field_index("indexed_at"), "indexed_at", later)
    added = pa.concat_tables([records(vectors[2100:3100], 2000), again])
    collections.store.put_parquet("collections/grow/faces/b.parquet", added)
    grown = publisher.publish(first, ["collections/grow/faces/b.parquet"])
    # Extended in place, except HNSW (FAISS cannot remove from its graph): rebuilt from every record.
    assert grown.extended_from == (first.version if spec != "HNSW16" else None)
    assert grown.face_count == 3000
    if spec.startswith("IVF"):
        assert grown.trained == first.trained  # added to the trained index, not retrained
    snapshots = _snapshots(collections, grown, tmp_path / "cache")
    assert sum(s.ntotal for s in snapshots) == 3000 and sum(len(s.ids) for s in snapshots) == 3000

    probes = np.concatenate([vectors[2000:2100], vectors[2100:2200], vectors[:5]])
    found = _search(snapshots, probes)
    # A re-indexed face is found by its new vector, and its old vector is gone.
    assert all(f[0] == i + 1 for i, f in enumerate(found[:100]))
    assert all(f[0] == 2001 + i for i, f in enumerate(found[100:200]))
    assert all(f[0] != 1 + i for i, f in enumerate(found[200:]))

    rebuilt = publisher.rebuild(grown)
    assert _search(_snapshots(collections, rebuilt, tmp_path / "cache2"), probes) == found


def test_erasure_after_growth_rebuilds(tmp_path: Path) -> None:
    collections, publisher, manifest = _flat_collection(tmp_path, "g")
    vectors, _ = clustered_vectors(600, 128, seed=6)
    for n, start in enumerate((0, 300)):
        key = f"collections/g/faces/{n}.parquet"
        collections.store.put_parquet(key, records(vectors[start : start + 300], start))
        manifest = publisher.publish(manifest, [key])
    manifest, erased = publisher.erase_faces(manifest, {f"{1:016x}", f"{400:016x}"}, set(), "test")
    assert len(erased) == 2 and manifest.face_count == 598
    snapshots = _snapshots(collections, manifest, tmp_path / "cache")
    assert sum(s.ntotal for s in snapshots) == 598
    assert all(1 not in s.ids and 400 not in s.ids for s in snapshots)


def test_a_publish_that_lost_a_race_changes_nothing(tmp_path: Path) -> None:
    collections, publisher, stale = _flat_collection(tmp_path, "r")
    vectors, _ = clustered_vectors(200, 128, seed=8)
    for n in range(2):
        collections.store.put_parquet(f"collections/r/faces/{n}.parquet", records(vectors[n * 100 :][:100], n * 100))
    winner = publisher.publish(stale, ["collections/r/faces/0.parquet"])
    with pytest.raises(CollectionChanged):
        publisher.publish(stale, ["collections/r/faces/1.parquet"])  # built from the version before the winner
    assert collections.get("r") == winner
    folders = {i.key.split("/")[3] for i in collections.store.list("collections/r/shards/")}
    assert folders == {winner.shards["0"].split("/")[3]}  # the loser's snapshots were removed
    latest = publisher.publish_latest("r", ["collections/r/faces/1.parquet"])
    assert latest.face_count == 200 and latest.version == winner.version + 1


def test_a_changed_object_replaces_its_faces(tmp_path: Path) -> None:
    """Same key, new etag, indexed later: the old version's faces are erased from records and snapshots."""
    collections, publisher, manifest = _flat_collection(tmp_path, "c")
    vectors, _ = clustered_vectors(300, 128, seed=9)
    collections.store.put_parquet("collections/c/faces/a.parquet", records(vectors[:200], 0))
    manifest = publisher.publish(manifest, ["collections/c/faces/a.parquet"])
    # Objects 1..10 changed (new etag, so new face ids 1001..1010), re-indexed a minute later; one unchanged
    # object (id 11) indexed again as a retry: same etag, same id, kept once.
    changed = records(vectors[200:210], 1000)
    retried = records(vectors[10:11], 10)
    changed = changed.set_column(
        changed.schema.get_field_index("source_key"), "source_key", records(vectors[:10], 0).column("source_key")
    )
    changed = changed.set_column(changed.schema.get_field_index("source_etag"), "source_etag", pa.array(["v2"] * 10))
    later = pa.array([datetime.now(UTC) + timedelta(minutes=1)] * 10, changed.schema.field("indexed_at").type)
    changed = changed.set_column(changed.schema.get_field_index("indexed_at"), "indexed_at", later)
    collections.store.put_parquet("collections/c/faces/b.parquet", pa.concat_tables([changed, retried]))
    manifest = publisher.publish(manifest, ["collections/c/faces/b.parquet"])
    assert manifest.face_count == 200  # 190 unchanged + 10 replaced, the retry counted once
    ids = set(collections.faces(manifest, ["faiss_id"]).column("faiss_id").to_pylist())
    assert not ids & set(range(1, 11)) and set(range(1001, 1011)) <= ids
    snapshots = _snapshots(collections, manifest, tmp_path / "cache")
    held = {int(i) for s in snapshots for i in s.ids}
    assert held == ids and sum(s.ntotal for s in snapshots) == 200


def test_a_publish_whose_previous_snapshots_went_meanwhile_lost_a_race(tmp_path: Path) -> None:
    """Two publishes landed while this one extended the snapshots they since dropped: a lost race (retried on top
    of the winner), not a storage error."""
    collections = Collections(LocalStore(tmp_path / "store"))
    publisher = Publisher(collections)
    manifest = collections.create(Manifest(name="gone", model_id="dlib-resnet-v1", model_sha256="s", shard_count=1))
    vectors, _ = clustered_vectors(300, 128, seed=9)
    for name, start in (("a", 0), ("b", 100), ("c", 200)):
        collections.store.put_parquet(
            f"collections/gone/faces/{name}.parquet", records(vectors[start : start + 100], start)
        )
    first = publisher.publish(manifest, ["collections/gone/faces/a.parquet"])
    second = publisher.publish(first, ["collections/gone/faces/b.parquet"])
    publisher.publish(second, ["collections/gone/faces/c.parquet"])  # drops the first version's snapshots
    with pytest.raises(CollectionChanged):
        publisher.publish(first, ["collections/gone/faces/c.parquet"])
    assert publisher.publish_latest("gone").face_count == 300


def test_a_snapshot_dropped_while_it_loads_is_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder store's shard reads the index, then maps the other files: a publish that drops the folder in between
    is a lost race (the shard reads the manifest again), never a FileNotFoundError (a 500 in an erasure's answer)."""
    collections, publisher, manifest = _flat_collection(tmp_path, "dropped")
    vectors, _ = clustered_vectors(100, 128, seed=4)
    collections.store.put_parquet("collections/dropped/faces/a.parquet", records(vectors, 0))
    published = publisher.publish(manifest, ["collections/dropped/faces/a.parquet"])
    store, directory = collections.store, published.shards["0"]
    path_of = store.path_of

    def found_then_dropped(key: str) -> Path:
        path = path_of(key)
        if key.endswith(RECORDS_FILE):  # the racing publish lands just after the files were found
            for info in list(store.list(directory)):
                store.delete(info.key)
        return path

    monkeypatch.setattr(store, "path_of", found_then_dropped)
    with pytest.raises(ObjectNotFound):
        ShardSnapshot.load(store, directory, "Flat", tmp_path / "cache", Placement())


def test_a_512_dimension_model_is_stored_published_and_searched(tmp_path: Path) -> None:
    """The manifest's `dim` decides the records' and the snapshots' width (ArcFace-class models are 512-D)."""
    collections = Collections(LocalStore(tmp_path / "store"))
    manifest = collections.create(
        Manifest(name="wide", model_id="dlib-resnet-v1", model_sha256="s", dim=512, shard_count=2, index_spec="Flat")
    )
    assert collections.faces(manifest).schema.field("embedding").type.list_size == 512  # empty, already 512
    vectors, _ = clustered_vectors(300, 512, seed=3)
    collections.store.put_parquet("collections/wide/faces/a.parquet", records(vectors, 0))
    published = Publisher(collections).publish(manifest, ["collections/wide/faces/a.parquet"])
    snapshots = _snapshots(collections, published, tmp_path / "cache")
    assert published.face_count == 300 and all(s.index.d == 512 for s in snapshots)
    assert [f[0] for f in _search(snapshots, vectors[:20])] == list(range(1, 21))


def test_erased_faces_leave_a_snapshot_that_a_later_publish_extends(tmp_path: Path) -> None:
    """An erasure's own publish may extend the snapshots (it folds new faces in too): the erased face goes all
    the same (the race harness found it served after its erasure)."""
    from cluster.collections.erasures import ErasureRegister

    collections, publisher, manifest = _flat_collection(tmp_path, "e")
    vectors, _ = clustered_vectors(200, 128, seed=4)
    collections.store.put_parquet("collections/e/faces/a.parquet", records(vectors[:100], 0))
    first = publisher.publish(manifest, ["collections/e/faces/a.parquet"])
    ErasureRegister(collections.store, "e").erased([{"face_id": f"{1:016x}", "source": "s", "etag": ""}], "test")
    collections.store.put_parquet("collections/e/faces/b.parquet", records(vectors[100:], 100))
    later = publisher.publish(first, ["collections/e/faces/b.parquet"], erasing=True)
    assert later.extended_from == first.version and later.face_count == 199
    found = _search(_snapshots(collections, later, tmp_path / "cache"), vectors[:1])
    assert 1 not in found[0]
