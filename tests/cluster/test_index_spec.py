"""Index specs: every kind finds a probe's mates as exact search does; knobs trade recall; auto picks by size."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from cluster.errors import InvalidRequest
from cluster.index_spec import FLAT_LIMIT, HNSW_LIMIT, SearchKnobs, apply_knobs, build, current_knobs, resolve
from jobs.bench_search import synthetic_faces

INDEXED, PROBES = 20_000, 200


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    vectors, owner = synthetic_faces(INDEXED + PROBES, 128)
    ids = np.arange(INDEXED, dtype=np.int64) * 7 + 3  # ids unlike row numbers: the id map must be used
    exact = faiss.IndexFlatIP(128)
    exact.add(vectors[:INDEXED])
    _, rows = exact.search(vectors[INDEXED:], 10)
    return {"vectors": vectors[:INDEXED], "probes": vectors[INDEXED:], "owner": owner, "ids": ids, "exact": ids[rows]}


def _recall(index: faiss.Index, data: dict[str, np.ndarray]) -> tuple[float, float]:
    _, got = index.search(data["probes"], 10)
    owner, ids = data["owner"], data["ids"]
    mates = [set(ids[owner[:INDEXED] == o]) for o in owner[INDEXED:]]
    mate = np.mean([len(set(g) & m) / len(m) for g, m in zip(got, mates, strict=True)])
    exact = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, data["exact"], strict=True)])
    return float(mate), float(exact)


@pytest.mark.parametrize("spec", ["Flat", "HNSW16", "IVF64,SQ8", "IVF64,PQ16"])
def test_every_spec_finds_the_mates(spec: str, data: dict[str, np.ndarray]) -> None:
    index = build(spec, data["vectors"], data["ids"])
    index = faiss.deserialize_index(faiss.serialize_index(index))  # as a shard loads its snapshot
    mate, exact = _recall(index, data)
    assert mate >= 0.99, (spec, mate)
    if spec == "Flat":
        assert exact == 1.0


def test_knobs_trade_recall_and_reset(data: dict[str, np.ndarray]) -> None:
    index = build("IVF64,SQ8", data["vectors"], data["ids"])
    defaults = current_knobs(index)
    apply_knobs(index, SearchKnobs(nprobe=64))
    thorough = _recall(index, data)[1]
    apply_knobs(index, SearchKnobs(nprobe=1))
    hasty = _recall(index, data)[1]
    assert thorough > hasty and thorough >= 0.99  # all lists plus exact re-ranking: exact search
    apply_knobs(index, defaults)
    assert current_knobs(index) == defaults


def test_auto_choice_by_shard_size() -> None:
    assert resolve("auto", 10) == "Flat"
    assert resolve("auto", FLAT_LIMIT + 1) == "HNSW32"
    assert resolve("auto", HNSW_LIMIT + 1).startswith("IVF") and resolve("auto", 2_500_000).endswith(",SQ8")
    assert resolve("IVF1024,PQ32", 10) == "IVF1024,PQ32"
    with pytest.raises(InvalidRequest):
        resolve("LSH", 10)


def test_tiny_shards_still_build() -> None:
    vectors, _ = synthetic_faces(30, 128)
    for spec in ("HNSW32", "IVF1024,SQ8"):
        index = build(spec, vectors, np.arange(30))
        assert index.ntotal == 30 and index.search(vectors[:1], 1)[1][0, 0] == 0
    assert build("IVF64,SQ8", np.zeros((0, 128), np.float32), np.zeros(0, np.int64)).ntotal == 0
