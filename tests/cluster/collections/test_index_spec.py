"""Index specs: every kind finds a probe's mates as exact search does; knobs trade recall; auto picks by size."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pytest

from cluster.collections import snapshot
from cluster.collections.index_spec import (
    FLAT_LIMIT,
    SPEC_PATTERN,
    SearchKnobs,
    Tuning,
    build,
    gpu_eligible,
    place,
    resolve,
    validate,
)
from cluster.collections.records import FACE_SCHEMA
from cluster.collections.snapshot import Placement, ShardSnapshot, write_shard
from cluster.errors import InvalidRequest
from cluster.storage import LocalStore
from tests.factories import clustered_vectors

INDEXED, PROBES = 20_000, 200


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    vectors, owner = clustered_vectors(INDEXED + PROBES, 128)
    ids = np.arange(INDEXED, dtype=np.int64) * 7 + 3  # ids unlike row numbers: the id map must be used
    exact = faiss.IndexFlatIP(128)
    exact.add(vectors[:INDEXED])
    _, rows = exact.search(vectors[INDEXED:], 10)
    return {"vectors": vectors[:INDEXED], "probes": vectors[INDEXED:], "owner": owner, "ids": ids, "exact": ids[rows]}


def _rows(vectors: np.ndarray, ids: np.ndarray) -> pa.Table:
    n = len(ids)
    columns = {
        "face_id": pa.array([f"{i:016x}" for i in ids]),
        "faiss_id": pa.array(ids, pa.int64()),
        "external_image_id": pa.array([f"person-{i}" for i in ids]),
        "source_key": pa.array([f"photos/{i}.jpg" for i in ids]),
        "bbox": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4 * n, np.float32)), 4),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 128),
        "indexed_at": pa.array([datetime.now(UTC)] * n, FACE_SCHEMA.field("indexed_at").type),
    }
    return pa.table(columns)


def _snapshot(tmp: Path, spec: str, data: dict[str, np.ndarray]) -> ShardSnapshot:
    """Written and loaded as a shard does: index, ids, records (and exact vectors for IVF) through its files."""
    store = LocalStore(tmp)
    write_shard(store, "shard", _rows(data["vectors"], data["ids"]), spec, None, seed=0)
    return ShardSnapshot.load(store, "shard", spec, tmp / "cache", Placement())


def _recall(
    snapshot: ShardSnapshot, data: dict[str, np.ndarray], knobs: SearchKnobs | None = None
) -> tuple[float, float]:
    _, got, records = snapshot.search(data["probes"], 10, knobs)
    owner, ids = data["owner"], data["ids"]
    mates = [set(ids[owner[:INDEXED] == o]) for o in owner[INDEXED:]]
    mate = np.mean([len(set(g) & m) / len(m) for g, m in zip(got, mates, strict=True)])
    exact = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, data["exact"], strict=True)])
    assert records[0][0]["external_image_id"] == f"person-{got[0][0]}"  # records follow the ids
    return float(mate), float(exact)


@pytest.mark.parametrize("spec", ["Flat", "HNSW16", "IVF64,SQ8", "IVF64,PQ16", "IVF64,PQ64x4fs"])
def test_every_spec_finds_the_mates(spec: str, data: dict[str, np.ndarray], tmp_path: Path) -> None:
    mate, exact = _recall(_snapshot(tmp_path, spec, data), data)
    print(f"{spec}: mate recall@10 {mate:.4f}, recall@10 vs exact {exact:.4f}")
    assert mate >= 0.99, (spec, mate)
    if spec == "Flat":
        assert exact == 1.0


@pytest.mark.parametrize("spec", ["Flat", "HNSW16", "IVF64,SQ8", "IVF64,PQ64x4fs"])
def test_a_snapshot_gives_back_the_stored_vectors(spec: str, data: dict[str, np.ndarray], tmp_path: Path) -> None:
    """What search by face id reads: exact vectors for IVF, the index's own for Flat and HNSW."""
    snapshot = _snapshot(tmp_path, spec, data)
    rows = np.array([0, 17, INDEXED - 1])
    asked = np.array([*data["ids"][rows], 1, 2**62])  # two ids no face has
    found, vectors = snapshot.vectors(asked)
    assert found.tolist() == [True, True, True, False, False]
    np.testing.assert_allclose(vectors, data["vectors"][rows], atol=1e-6)


def test_knobs_trade_recall_per_query(data: dict[str, np.ndarray], tmp_path: Path) -> None:
    snapshot = _snapshot(tmp_path, "IVF64,SQ8", data)
    default = _recall(snapshot, data)[1]
    thorough = _recall(snapshot, data, SearchKnobs(nprobe=64))[1]
    hasty = _recall(snapshot, data, SearchKnobs(nprobe=1))[1]
    assert thorough > hasty and thorough >= 0.999  # all lists plus exact re-ranking: exact search
    assert _recall(snapshot, data)[1] == default  # a query's knobs never stick to the shard


def test_auto_choice_by_shard_size() -> None:
    assert resolve("auto", 10) == "Flat"
    assert resolve("auto", FLAT_LIMIT + 1) == "IVF1024,SQ8"
    assert resolve("auto", 250_000) == "IVF1024,SQ8" and resolve("auto", 2_500_000) == "IVF4096,SQ8"
    assert resolve("IVF1024,PQ32", 10_000) == "IVF1024,PQ32"
    assert resolve("IVF4,PQ128", 30) == "Flat"  # too few faces to train 8-bit PQ: exact until then
    assert resolve("auto", 250_000, "PQ64x4fs") == "IVF512,PQ64x4fs"  # the model's codes (SFace's), longer lists
    assert resolve("IVF256,PQ32x4fs", 250_000) == "IVF256,PQ32x4fs"
    bad_specs = ("LSH", "IVF64,PQ7", "HNSW0", "HNSW1", "HNSW999", "IVF0,SQ8", "IVF0,PQ8", "IVF99999999,SQ8", "IVF4,PQ0")
    for bad in (*bad_specs, "IVF4,PQ7x4fs", "IVF4,PQ8x8fs"):
        with pytest.raises(InvalidRequest):
            resolve(bad, 10)


def test_tiny_shards_still_build() -> None:
    vectors, _ = clustered_vectors(30, 128)
    for spec in ("HNSW32", "IVF1024,SQ8"):
        index = build(spec, vectors, np.arange(30))
        assert index.ntotal == 30 and index.search(vectors[:1], 1)[1][0, 0] == 0
    assert build("IVF64,SQ8", np.zeros((0, 128), np.float32), np.zeros(0, np.int64)).ntotal == 0


def test_gpu_placement_follows_what_faiss_reports(data: dict[str, np.ndarray]) -> None:
    """Flat and IVF may move to a GPU, HNSW never; with no GPU reported, or a FAISS built without GPU support
    (this machine's), the CPU index is kept whatever is asked. (A GPU is not faked: the clone would need one.)"""
    index = build("Flat", data["vectors"][:100], data["ids"][:100])
    assert gpu_eligible("Flat") and gpu_eligible("IVF1024,SQ8") and not gpu_eligible("HNSW32")
    assert not gpu_eligible("IVF1024,PQ64x4fs")  # FAISS has no GPU fast-scan
    assert place(index, "Flat", 0) == (index, "cpu")
    assert place(index, "HNSW32", 4)[1] == "cpu"
    if not hasattr(faiss, "StandardGpuResources"):
        assert place(index, "Flat", 4) == (index, "cpu")
    assert Tuning.of(build("IVF64,SQ8", data["vectors"], data["ids"])).kind == "ivf"


def test_records_read_from_the_file_match_those_held(
    data: dict[str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large shards read a hit's record from its batch in the file instead of holding them all: same answers."""
    held = _snapshot(tmp_path / "held", "IVF64,SQ8", data)
    monkeypatch.setattr(snapshot, "RECORDS_IN_MEMORY_BYTES", 0)
    read = _snapshot(tmp_path / "read", "IVF64,SQ8", data)
    assert held.held is not None and read.held is None
    assert held.search(data["probes"][:20], 10)[2] == read.search(data["probes"][:20], 10)[2]


def _accepted(spec: str) -> bool:
    try:
        validate(spec)
    except InvalidRequest:
        return False
    return True


def test_the_schemas_pattern_accepts_exactly_the_specs_validate_accepts() -> None:
    pattern = re.compile(SPEC_PATTERN)
    numbers = [str(n) for n in range(70_000)] + ["007", "32 ", "1e3", "-4", ""]
    specs = ["auto", "Flat", "Flat\n", "flat", "IVF8,SQ8\n", "HNSW", "IVF,SQ8", "IVF8,PQ8x4", "IVF8,SQ4"]
    specs += [f"HNSW{n}" for n in numbers] + [f"IVF{n},SQ8" for n in numbers]
    specs += [f"IVF64,PQ{n}" for n in numbers[:300]] + [f"IVF64,PQ{n}x4fs" for n in numbers[:300]]
    disagreements = [s for s in specs if bool(pattern.fullmatch(s)) != _accepted(s)]
    assert disagreements == []
