"""FAISS index specs per collection: the automatic choice by size, training on a sample, knobs, GPU placement."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, cast

import faiss
import numpy as np

from cluster.errors import InvalidRequest

AUTO = "auto"
_SPEC = re.compile(r"Flat|HNSW(?P<m>[1-9]\d*)|IVF(?P<nlist>[1-9]\d*),(?:SQ8|PQ(?P<pq>[1-9]\d*)(?P<fs>x4fs)?)")
# Per shard. Flat search of 200k x 128 takes about 2 ms on one core here; beyond that IVF with 8-bit codes (136
# bytes a face with its id) and exact re-ranking. Measured (README, "Chosen by measurement") on vectors fitted to
# dlib's lfw-dev embeddings, 250k faces a shard: IVF1024 visiting a quarter of its lists finds 99.6% of what exact
# search puts in a shard's top 10 in 1.3 ms, where HNSW32 needs a breadth of 256 for 99.4% in 1.5 ms, builds 20x
# slower and holds ~800 bytes a face. SFace's embeddings spread wider: its share of lists is half (the registry's
# ivf_probe_fraction), and its codes are 4-bit fast-scan PQ (`ivf_codes`): half the lists of a 250k-face shard
# in 1.0-1.3 ms against SQ8's 4.2, finding the same mates after the exact re-rank. HNSW remains available by name.
FLAT_LIMIT = 200_000
# FAISS wants 39 to 256 training points per inverted list; 64 trains 4096 lists in about 30 s on two cores.
TRAIN_POINTS_PER_LIST = 64
MIN_POINTS_PER_LIST = 39
HNSW_EF_CONSTRUCTION = 80
MIN_HNSW_M, MAX_HNSW_M = 2, 256
MAX_LISTS = 65_536
# The specs `validate` accepts, as one regex for the API's schema
# (tests/cluster/collections/test_index_spec.py holds them equal): M in 2-256, n in 1-65,536, m dividing 128.
_M = "[2-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-6]"
_LISTS = "[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-6]"
_PQ = "1|2|4|8|16|32|64|128"
SPEC_PATTERN = f"^(?:{AUTO}|Flat|HNSW(?:{_M})|IVF(?:{_LISTS}),(?:SQ8|PQ(?:{_PQ})(?:x4fs)?))$"
# FAISS trains 8-bit PQ on at least 256 points; shards are a hash split, so leave room for uneven ones.
PQ_MIN_FACES = 1024
# FAISS's default breadth (16) is tuned for speed: at 250k faces a shard it finds 89% of a shard's exact top 10
# at 64, 97% at 128, 99.4% at 256 (vectors fitted to dlib's lfw-dev embeddings; SFace's: 99.8% at 64).
HNSW_EF_SEARCH = 128
# Compressed codes only shortlist: the best k * factor are re-scored with the exact stored vectors. Product
# quantisation ranks coarser than 8-bit scalar codes, so it shortlists more.
# 4-bit fast-scan codes over pairs of dimensions rank about as well as SQ8 on SFace's vectors (measured: 0.9993
# of the mates with a shortlist of 40 for 10, as SQ8).
RERANK_FACTOR = {"SQ8": 4, "PQ": 16, "fs": 4}


@contextmanager
def faiss_threads(count: int) -> Iterator[None]:
    """FAISS on `count` threads in the calling thread for the block, then as before."""
    held = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(held)


def all_cores() -> AbstractContextManager[None]:
    """FAISS on every core for a build (training, adding), whatever this process uses for searching."""
    return faiss_threads(os.cpu_count() or 1)


@dataclass(frozen=True)
class SearchKnobs:
    """Per-query accuracy/speed trade-offs; None keeps the index's default."""

    nprobe: int | None = None
    ef_search: int | None = None


def validate(spec: str) -> str:
    """The spec if FAISS can build it; a clear error naming the rule otherwise, before anything is built (FAISS
    aborts the whole process on HNSW0 and fails at the first add on IVF0)."""
    match = _SPEC.fullmatch(spec)
    if spec != AUTO and match is None:
        raise InvalidRequest(
            f"index spec {spec!r}: use auto, Flat, HNSW<M>, IVF<n>,SQ8, IVF<n>,PQ<m> or IVF<n>,PQ<m>x4fs"
        )
    if match and match["m"] and not MIN_HNSW_M <= int(match["m"]) <= MAX_HNSW_M:
        raise InvalidRequest(f"index spec {spec!r}: HNSW<M> needs M between {MIN_HNSW_M} and {MAX_HNSW_M}")
    if match and match["nlist"] and not 1 <= int(match["nlist"]) <= MAX_LISTS:
        raise InvalidRequest(f"index spec {spec!r}: IVF<n> needs n between 1 and {MAX_LISTS}")
    if match and match["pq"] and (int(match["pq"]) == 0 or 128 % int(match["pq"])):
        raise InvalidRequest(f"index spec {spec!r}: PQ<m> needs m dividing 128 (8, 16, 32, 64)")
    return spec


def resolve(spec: str, faces_per_shard: int, codes: str = "SQ8") -> str:
    """The spec a shard of this size is built with: `auto` picks by size (IVF with the model's `codes` beyond
    FLAT_LIMIT), others are kept as given."""
    if validate(spec) != AUTO:
        # 8-bit PQ trains 256 centroids per sub-vector: a shard too small to train them is built exact until then.
        return "Flat" if ",PQ" in spec and faces_per_shard < PQ_MIN_FACES else spec
    if faces_per_shard <= FLAT_LIMIT:
        return "Flat"
    # Fast-scan codes are scanned 32 at a time and pay per list visited: half as many lists, twice as long,
    # visit the same share of a shard in 0.77 ms instead of 1.1 (250k faces, 0.9987 of the mates as before).
    lists = math.sqrt(faces_per_shard) if codes.endswith("fs") else 2 * math.sqrt(faces_per_shard)
    return validate(f"IVF{2 ** round(math.log2(lists))},{codes}")


def compressed(spec: str) -> bool:
    """Whether the index holds lossy codes, so that shards keep exact vectors beside it for re-ranking."""
    return spec.startswith("IVF")


def rerank_factor(spec: str) -> int:
    if not compressed(spec):
        return 1
    return RERANK_FACTOR["fs" if spec.endswith("fs") else "PQ" if ",PQ" in spec else "SQ8"]


def default_nprobe(nlist: int, fraction: float = 0.25) -> int:
    """The model's fraction of the lists (its `Embedding.ivf_probe_fraction`), at least 16."""
    return min(nlist, max(16, round(nlist * fraction)))


def train(spec: str, sample: np.ndarray, seed: int = 0, probe_fraction: float = 0.25) -> faiss.Index:
    """An empty IVF index trained on `sample` (the coarse centroids and the codes), shared by every shard."""
    match = _SPEC.fullmatch(spec)
    if match is None or not match["nlist"]:
        raise InvalidRequest(f"index spec {spec!r} needs no training")
    dim = sample.shape[1]
    nlist = max(1, min(int(match["nlist"]), len(sample) // MIN_POINTS_PER_LIST or 1))
    codes = f"PQ{match['pq']}{match['fs'] or ''}" if match["pq"] else "SQ8"
    index = faiss.index_factory(dim, f"IVF{nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    if match["pq"] and len(sample) < 256:
        raise InvalidRequest(f"index spec {spec!r} trains on at least 256 faces; the sample has {len(sample)}")
    if match["pq"]:
        quantizer: Any = faiss.downcast_index(index)
        quantizer.pq.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
    if len(sample):
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    ivf.nprobe = default_nprobe(nlist, probe_fraction)
    return index


def training_sample(vectors: np.ndarray, spec: str, seed: int = 0) -> np.ndarray:
    match = _SPEC.fullmatch(spec)
    want = int(match["nlist"]) * TRAIN_POINTS_PER_LIST if match and match["nlist"] else 0
    if len(vectors) <= want:
        return vectors
    rng = np.random.default_rng(seed)
    return vectors[np.sort(rng.choice(len(vectors), want, replace=False))]


def build(
    spec: str, vectors: np.ndarray, ids: np.ndarray, seed: int = 0, trained: faiss.Index | None = None
) -> faiss.Index:
    """An inner-product index with 64-bit ids. IVF specs add to `trained` (or train on a sample of `vectors`)."""
    dim = vectors.shape[1]
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise InvalidRequest(f"cannot build index spec {spec!r}")
    if match["nlist"]:
        # IVF keeps the ids in its lists: no id map (and no id map's hash table, ~40 bytes a face) is needed.
        index = faiss.clone_index(trained) if trained is not None else train(spec, training_sample(vectors, spec, seed))
    elif match["m"]:
        graph = faiss.IndexHNSWFlat(dim, int(match["m"]), faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        graph.hnsw.efSearch = HNSW_EF_SEARCH
        index = faiss.IndexIDMap(graph)
    else:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    if len(vectors):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    return index


@dataclass(frozen=True)
class Tuning:
    """What per-query knobs apply to, read from the CPU index before it is placed (a GPU copy hides its kind)."""

    kind: str  # "ivf", "hnsw" or "flat"
    nlist: int
    defaults: SearchKnobs

    @classmethod
    def of(cls, index: faiss.Index) -> Tuning:
        inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexIDMap) else index)
        if isinstance(inner, faiss.IndexIVF):
            return cls("ivf", inner.nlist, SearchKnobs(nprobe=inner.nprobe))
        if isinstance(inner, faiss.IndexHNSW):
            return cls("hnsw", 0, SearchKnobs(ef_search=inner.hnsw.efSearch))
        return cls("flat", 0, SearchKnobs())

    def params(self, knobs: SearchKnobs | None) -> faiss.SearchParameters | None:
        """Per-call parameters: concurrent searches on one shard never change each other's knobs."""
        knobs = knobs or SearchKnobs()
        if self.kind == "ivf":
            ivf = faiss.SearchParametersIVF()
            ivf.nprobe = max(1, min(knobs.nprobe or self.defaults.nprobe or 1, self.nlist))
            return ivf
        if self.kind == "hnsw":
            hnsw: Any = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            hnsw.efSearch = max(1, knobs.ef_search or self.defaults.ef_search or 16)
            return cast(faiss.SearchParameters, hnsw)
        return None


def gpu_eligible(spec: str) -> bool:
    """FAISS runs Flat and IVF on a GPU; HNSW and fast-scan codes stay on the CPU."""
    return not spec.startswith("HNSW") and not spec.endswith("fs")


def place(index: faiss.Index, spec: str, gpus: int) -> tuple[faiss.Index, str]:
    """The index on a GPU (fp16 storage) when FAISS reports one and the spec runs there, else as it is."""
    if gpus <= 0 or not gpu_eligible(spec) or not hasattr(faiss, "StandardGpuResources"):
        return index, "cpu"
    resources = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16 = True
    gpu_index = faiss.index_cpu_to_gpu(resources, 0, index, options)
    setattr(gpu_index, "referenced_resources", resources)  # noqa: B010 - kept alive as long as the index
    return gpu_index, "gpu:0"
