"""FAISS index specs per collection: the automatic choice by size, training on a sample, exact re-ranking, knobs."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import faiss
import numpy as np

from cluster.errors import InvalidRequest

AUTO = "auto"
_SPEC = re.compile(r"^(?:Flat|HNSW(?P<m>\d+)|IVF(?P<nlist>\d+),(?:SQ8|PQ(?P<pq>\d+)))$")
# Per shard. Flat search of 200k x 128 takes about 2 ms on one core here: beyond that a graph pays off; beyond 2M
# faces per shard HNSW's ~700 bytes per face no longer fit, and IVF with 8-bit codes (128 bytes) takes over.
FLAT_LIMIT = 200_000
HNSW_LIMIT = 2_000_000
# FAISS wants 39 to 256 training points per inverted list; more only slows training.
TRAIN_POINTS_PER_LIST = 128
# Compressed codes only shortlist: the best k * RERANK_FACTOR are re-scored with the exact vectors.
RERANK_FACTOR = 4
HNSW_EF_CONSTRUCTION = 80


@dataclass(frozen=True)
class SearchKnobs:
    """Per-query accuracy/speed trade-offs; None keeps the index's default."""

    nprobe: int | None = None
    ef_search: int | None = None


def validate(spec: str) -> str:
    if spec != AUTO and not _SPEC.match(spec):
        raise InvalidRequest(f"index spec {spec!r}: use auto, Flat, HNSW<M>, IVF<n>,SQ8 or IVF<n>,PQ<m>")
    return spec


def resolve(spec: str, faces_per_shard: int) -> str:
    """The spec a shard of this size is built with: `auto` picks by size, others are kept as given."""
    if validate(spec) != AUTO:
        return spec
    if faces_per_shard <= FLAT_LIMIT:
        return "Flat"
    if faces_per_shard <= HNSW_LIMIT:
        return "HNSW32"
    nlist = 2 ** round(math.log2(4 * math.sqrt(faces_per_shard)))
    return f"IVF{nlist},SQ8"


def default_nprobe(nlist: int) -> int:
    # A sixteenth of the lists, at least 16: near-exact recall on clustered face embeddings (tests/cluster).
    return min(nlist, max(16, nlist // 16))


def build(spec: str, vectors: np.ndarray, ids: np.ndarray, seed: int = 0) -> faiss.Index:
    """An inner-product index with 64-bit ids; IVF specs train on a sample and re-rank with exact vectors."""
    dim = vectors.shape[1]
    match = _SPEC.match(spec)
    if match is None:
        raise InvalidRequest(f"cannot build index spec {spec!r}")
    if spec == "Flat":
        base: faiss.Index = faiss.IndexFlatIP(dim)
    elif match["m"]:
        base = faiss.IndexHNSWFlat(dim, int(match["m"]), faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        nlist = max(1, min(int(match["nlist"]), len(vectors) // 39 or 1))
        codes = f"PQ{match['pq']}" if match["pq"] else "SQ8"
        ivf = faiss.index_factory(dim, f"IVF{nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
        if len(vectors):
            rng = np.random.default_rng(seed)
            sample = rng.choice(len(vectors), min(len(vectors), nlist * TRAIN_POINTS_PER_LIST), replace=False)
            ivf.train(vectors[np.sort(sample)])
        faiss.extract_index_ivf(ivf).nprobe = default_nprobe(nlist)
        base = faiss.IndexRefineFlat(ivf)
        base.k_factor = RERANK_FACTOR
    index = faiss.IndexIDMap2(base)
    if len(vectors):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    return index


def _searcher(index: faiss.Index) -> faiss.Index:
    """The index that does the searching under the id map and the re-ranking stage."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexRefine):
        inner = faiss.downcast_index(inner.base_index)
    return inner


def current_knobs(index: faiss.Index) -> SearchKnobs:
    """The knobs an index was built with: what a query that sets none gets back to."""
    inner = _searcher(index)
    if isinstance(inner, faiss.IndexIVF):
        return SearchKnobs(nprobe=inner.nprobe)
    if isinstance(inner, faiss.IndexHNSW):
        return SearchKnobs(ef_search=inner.hnsw.efSearch)
    return SearchKnobs()


def apply_knobs(index: faiss.Index, knobs: SearchKnobs) -> None:
    """Set per-query knobs on whatever the id map wraps (a shard answers one call at a time)."""
    inner = _searcher(index)
    if knobs.nprobe is not None and isinstance(inner, faiss.IndexIVF):
        inner.nprobe = max(1, min(knobs.nprobe, inner.nlist))
    if knobs.ef_search is not None and isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = max(1, knobs.ef_search)
