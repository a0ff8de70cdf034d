"""Publishing a collection: build or extend every shard's snapshot from the records, race check, manifest swap,
cleanup; rebuilds, reshards and erasure are publishes too."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from cluster.collections import index_spec
from cluster.collections.erasures import ErasureRegister
from cluster.collections.live import live_segments
from cluster.collections.manifest import Collections, Manifest, TrainedIndex, check_shard_count, now
from cluster.collections.photos import KeptPhotos, photo_sha256
from cluster.collections.records import deduplicate, drop_superseded, erase_rows, face_schema, shard_of
from cluster.collections.snapshot import RECORD_COLUMNS, extend_shard, vectors_of, write_shard
from cluster.collections.versions import Versions
from cluster.errors import CollectionChanged
from cluster.locks import collection_lock
from cluster.models.registry import embedding_of
from cluster.storage import ObjectNotFound

# Racing publishes (erasures beside ingests and index jobs) retry on top of the winner; each try is cheap.
PUBLISH_ATTEMPTS = 12


class Publisher:
    """Turns record files into a new published version of a collection, all or nothing."""

    def __init__(self, collections: Collections) -> None:
        self.collections = collections
        self.store = collections.store
        self._erased = np.zeros(0, np.int64)  # faiss ids on the erasure register, read by each publish

    def publish(
        self,
        manifest: Manifest,
        face_files: Iterable[str] = (),
        error_files: Iterable[str] = (),
        retrain: bool = False,
        erasing: bool = False,
        guard: Callable[[Manifest], AbstractContextManager[Any]] | None = None,
    ) -> Manifest:
        """Build every shard's snapshot from the published face records, then swap the manifest in: all or nothing.

        Shards are built one at a time from their own rows (memory: one shard, not the collection). Routing is
        by face id and the manifest's shard count, so a new count reshards. A publish that only adds records to
        Flat or IVF shards of an unchanged shape adds them to the previous snapshots (`extended_from` says so);
        IVF indexes are built from the collection's trained index while the resolved spec is unchanged;
        `retrain` trains afresh. A publish that another one overtook raises CollectionChanged, having changed
        nothing. `guard`, given the current manifest under the collection's lock just before the swap, may refuse
        it (raising: nothing changes) or hold more locks through it.
        """
        face_files, error_files = list(face_files), list(error_files)
        # The register decides: a record that a racing rewrite brought back into a file is still never served.
        register = ErasureRegister(self.store, manifest.name).erased_ids()
        self._erased = np.array(sorted(int(face_id, 16) for face_id in register), dtype=np.int64)
        segments = [i.key for i in live_segments(self.collections, manifest)]
        folded_file = self._fold(manifest, segments)
        if folded_file is not None:
            face_files.append(folded_file)
        new = manifest.model_copy(deep=True)
        new.folded = segments
        new.face_files = sorted(set(manifest.face_files) | set(face_files))
        new.error_files = sorted(set(manifest.error_files) | set(error_files))
        new.version = manifest.version + 1
        added = sorted(set(face_files) - set(manifest.face_files))
        fresh_errors = sorted(set(error_files) - set(manifest.error_files))
        superseded = drop_superseded(self.store, new.face_files, added, fresh_errors)
        ids = self._unique_ids(new)
        new.face_count = len(ids)
        per_shard = np.bincount(shard_of(ids, new.shard_count), minlength=new.shard_count)
        spec = new.built_spec = index_spec.resolve(
            new.index_spec, int(per_shard.max(initial=0)), embedding_of(new.model_id).ivf_codes
        )
        if manifest.shards and len(manifest.shards) != new.shard_count:  # a reshard: a new set of shard actors
            new.shard_set = new.version
        new.shards = {}
        extend = not superseded and _extendable(manifest, new, spec, retrain, added)
        new.extended_from = manifest.version if extend else None
        # A folder of its own: a concurrent publish of the same version never writes into this one.
        folder = f"{new.version:08d}-{secrets.token_hex(4)}"
        try:
            with index_spec.all_cores():
                self._build_shards(new, folder, spec, retrain, manifest if extend else None, added)
        except ObjectNotFound:
            # A file this build read (a previous snapshot, a record file) went with a publish that landed
            # meanwhile: a lost race like the one below (retried on top of the winner), unless nothing moved.
            if self.collections.get(new.name).version == manifest.version:
                raise
        new.updated_at = now()
        # The check and the swap are one step for every process on the store (two erasures once both passed the
        # check, and each deleted the other's snapshots).
        with collection_lock(self.store, new.name):
            current = self.collections.get(new.name)
            if current.version != manifest.version:
                self._discard(current, folder, folded_file)
                raise CollectionChanged(
                    f"collection {new.name!r} moved to version {current.version} while version {new.version} was "
                    f"being built from {manifest.version}; nothing was changed, run it again"
                )
            with ExitStack() as held:
                if guard is not None:
                    try:
                        held.enter_context(guard(current))
                    except BaseException:
                        self._discard(current, folder, folded_file)
                        raise
                self.collections.write(new)
            for key in segments:  # folded into the published records: the log keeps only what is still live
                self.store.delete(key)
            # The version just replaced keeps its snapshots until the next publish (a shard may be loading it
            # now), unless they hold faces this publish removed: erased or superseded embeddings go at once.
            self._drop_unreferenced(new, previous=None if erasing or superseded else manifest)
        return new

    def _discard(self, current: Manifest, folder: str, folded_file: str | None) -> None:
        """What a publish that will not land built: its snapshot folder and its fold of the log."""
        self._drop_unreferenced(current, only=f"{self.collections.prefix(current.name)}shards/{folder}/")
        if folded_file is not None:
            self.store.delete(folded_file)

    def _fold(self, manifest: Manifest, segments: list[str]) -> str | None:
        """The live log's segments as one record file of this publish (None when the log is empty)."""
        tables = []
        for key in segments:
            try:
                tables.append(self.store.get_parquet(key))
            except ObjectNotFound:
                continue  # folded by a publish that landed meanwhile; this one will lose its race
        if not tables:
            return None
        name = f"fold-{manifest.version + 1:08d}-{secrets.token_hex(4)}.parquet"
        key = f"{self.collections.prefix(manifest.name)}faces/{name}"
        self.store.put_parquet(key, pa.concat_tables(tables))
        return key

    def publish_latest(
        self, name: str, face_files: Iterable[str] = (), error_files: Iterable[str] = (), erasing: bool = False
    ) -> Manifest:
        """Publish onto the current version; if another publish lands meanwhile, build again on top of it (after a
        random pause that grows, so that racing publishers spread out)."""
        face_files, error_files = list(face_files), list(error_files)
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                return self.publish(self.collections.get(name), face_files, error_files, erasing=erasing)
            except CollectionChanged:
                if attempt == PUBLISH_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))
        raise AssertionError("unreachable")

    def rebuild(
        self, manifest: Manifest, shard_count: int | None = None, spec: str | None = None, retrain: bool = False
    ) -> Manifest:
        """New snapshots from the same records, with another shard count or index spec; swapped in atomically."""
        changes: dict[str, Any] = {}
        if shard_count is not None:
            changes["shard_count"] = check_shard_count(shard_count)
        if spec is not None:
            changes["index_spec"] = index_spec.validate(spec)
        return self.publish(manifest.model_copy(update=changes), retrain=retrain)

    def recalibrate(self, name: str, calibration: dict[str, Any], sha256: str) -> tuple[Manifest, Manifest]:
        """Pin another calibration (a new version, the same snapshots): (the manifest before, the one after)."""

        def pin(manifest: Manifest) -> None:
            manifest.calibration, manifest.calibration_sha256 = calibration, sha256

        return self.amend(name, pin)

    def amend(self, name: str, change: Callable[[Manifest], None]) -> tuple[Manifest, Manifest]:
        """A new version that changes only what `change` sets (a calibration, the replica count), keeping every
        snapshot, race-checked like a publish: (the manifest before, the one after)."""
        for attempt in range(PUBLISH_ATTEMPTS):
            old = self.collections.get(name)
            new = old.model_copy(deep=True)
            change(new)
            new.version, new.updated_at, new.folded = old.version + 1, now(), []
            with collection_lock(self.store, name):
                if self.collections.get(name).version == old.version:
                    self.collections.write(new)
                    return old, new
            time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))
        raise CollectionChanged(f"collection {name!r} kept changing; nothing was changed, run it again")

    def erase_faces(
        self, manifest: Manifest, face_ids: set[str], external_ids: set[str], by: str
    ) -> tuple[Manifest, list[dict[str, Any]]]:
        """Remove faces from the Parquet records (the live log's included) and the shard snapshots: real erasure,
        not a tombstone; the erasure register remembers them (never their vectors) so that no job brings them back."""
        with collection_lock(self.store, manifest.name):
            # Under the collection's lock from the first read to the swap: a second erasure of the same faces
            # waits for this one's publish, then finds them on the register (no answer before they are gone).
            erased = erase_rows(self.store, self._record_files(manifest.name), face_ids, external_ids)
            register = ErasureRegister(self.store, manifest.name)
            if erased:
                register.erased(erased, by)
                published = self.publish_latest(manifest.name, erasing=True)
            else:
                published = self.collections.get(manifest.name)
            # A kept photo goes with its last face (still under the collection's lock: no fold moves a segment).
            # Faces asked for that were erased before count too, so that a retry after a crash here finishes. The
            # register (an object an act) is read only where a photo may be at stake.
            sources = [e["source"] for e in erased]
            asked_before = face_ids - {e["face_id"] for e in erased}
            entries = register.entries() if asked_before or any(map(photo_sha256, sources)) else {}
            sources += [entries[f]["source"] for f in asked_before if f in entries]
            photos = {sha for sha in map(photo_sha256, sources) if sha}
            deleted = KeptPhotos(self.store, manifest.name).drop_unnamed(
                photos, lambda: self._record_files(manifest.name), set(entries)
            )
            register.photos_deleted(deleted, by)
            for entry in erased:
                entry["photo_deleted"] = photo_sha256(entry["source"]) in deleted
            return published, erased

    def _record_files(self, name: str) -> list[str]:
        """Every record file of the collection now: its folded records and its live log."""
        current = self.collections.get(name)
        held = Versions(self.store, name).held_record_files()  # an upgrade's shadow, the version before a cut-over
        live = [i.key for i in live_segments(self.collections, current)]
        return list(dict.fromkeys([*current.face_files, *live, *held]))

    def _build_shards(
        self, new: Manifest, folder: str, spec: str, retrain: bool, previous: Manifest | None, added: list[str]
    ) -> None:
        trained = None
        for shard in range(new.shard_count):
            directory = f"{self.collections.prefix(new.name)}shards/{folder}/{shard}"
            if previous is not None:
                rows = deduplicate(self._shard_rows(added, new, shard))
                extend_shard(self.store, previous.shards[str(shard)], directory, rows, spec, self._erased)
            else:
                rows = deduplicate(self._shard_rows(new.face_files, new, shard))
                if index_spec.compressed(spec) and trained is None:
                    trained = self._trained(new, spec, rows, retrain)
                write_shard(self.store, directory, rows, spec, trained, seed=shard)
            new.shards[str(shard)] = directory

    def _unique_ids(self, manifest: Manifest) -> np.ndarray:
        parts = [self.store.get_parquet(k, ["faiss_id"]).column("faiss_id").to_numpy() for k in manifest.face_files]
        ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        return ids[~np.isin(ids, self._erased)]

    def _shard_rows(self, files: list[str], manifest: Manifest, shard: int) -> pa.Table:
        columns = ["face_id", "faiss_id", "embedding", "indexed_at", *RECORD_COLUMNS[1:]]
        tables = []
        for key in files:
            table = self.store.get_parquet(key, columns)
            ids = table.column("faiss_id").to_numpy()
            mine = (shard_of(ids, manifest.shard_count) == shard) & ~np.isin(ids, self._erased)
            tables.append(table.filter(pa.array(mine)))
        return pa.concat_tables(tables) if tables else face_schema(manifest.dim).empty_table().select(columns)

    def _trained(self, manifest: Manifest, spec: str, rows: pa.Table, retrain: bool) -> faiss.Index:
        """The collection's trained (empty) IVF index: the stored one while the spec holds, else trained now on
        a sample of the first shard's rows (a uniform sample of the collection: routing is by a hash)."""
        held = manifest.trained
        if held is not None and held.spec == spec and not retrain:
            try:
                return faiss.deserialize_index(np.frombuffer(self.store.get(held.key), dtype=np.uint8))
            except ObjectNotFound:
                pass
        sample = index_spec.training_sample(vectors_of(rows.column("embedding").combine_chunks(), manifest.dim), spec)
        fraction = embedding_of(manifest.model_id).ivf_probe_fraction
        trained = index_spec.train(spec, sample, seed=manifest.version, probe_fraction=fraction)
        key = f"{self.collections.prefix(manifest.name)}trained/{manifest.version:08d}-{secrets.token_hex(4)}.faiss"
        self.store.put(key, faiss.serialize_index(trained).tobytes())
        manifest.trained = TrainedIndex(spec=spec, key=key, faces=manifest.face_count)
        return trained

    def _drop_unreferenced(self, manifest: Manifest, only: str | None = None, previous: Manifest | None = None) -> None:
        """Snapshots and trainings neither the manifest nor `previous` names go (loaded shards keep theirs);
        `only` limits this to one folder, for a publish that lost a race cleaning up after itself."""
        keep = set(manifest.shards.values()) | (set(previous.shards.values()) if previous else set())
        trained = manifest.trained.key if manifest.trained else None
        prefix = self.collections.prefix(manifest.name)
        if only:
            listed = [*self.store.list(only)]
        else:
            # Folders of later versions belong to publishes building now on top of this one: theirs to keep.
            listed = [
                info
                for info in [*self.store.list(prefix + "shards/"), *self.store.list(prefix + "trained/")]
                if _built_for(info.key, len(prefix)) <= manifest.version
            ]
        for info in listed:
            if info.key.rsplit("/", 1)[0] not in keep and info.key != trained:
                self.store.delete(info.key)


def _built_for(key: str, after: int) -> int:
    """The version a snapshot folder or training was built for: its name starts with it, zero-padded."""
    name = key[after:].split("/", 2)[1]
    return int(name.split("-", 1)[0]) if name[:8].isdigit() else 0


def _extendable(old: Manifest, new: Manifest, spec: str, retrain: bool, added: list[str]) -> bool:
    """Whether this publish only adds records to snapshots of the same shape: then shards add the new faces
    to what they hold (IVF keeps its training) instead of rebuilding from every record."""
    same_shape = len(old.shards) == new.shard_count == old.shard_count and old.built_spec == spec
    return bool(added) and same_shape and not retrain and not spec.startswith("HNSW") and old.face_count > 0
