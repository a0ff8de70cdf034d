"""A shard host's own merge: each shard keeps its part of the top k over all the host's shards, in the fan-out's
order, so that records are read only for hits that can be in the answer."""

from __future__ import annotations

import numpy as np

from cluster.shards.host import best_of


def test_best_of_keeps_each_shards_part_of_the_top_k() -> None:
    rng = np.random.default_rng(3)
    queries, k = 7, 10
    ranked = {}
    for shard, width in ((0, 10), (1, 4), (2, 0), (3, 10)):
        scores = np.sort(rng.random((queries, width)).astype(np.float32), axis=1)[:, ::-1]
        ids = rng.choice(10_000, (queries, width), replace=False) * 4 + shard
        if width:
            ids[0, -2:] = -1  # a shard with fewer faces pads with -1
        ranked[shard] = (scores, ids)
    ranked[3][0][1, 0] = ranked[0][0][1, 0]  # a tie: the lower id comes first
    kept = best_of(ranked, k)

    def hits(answers: dict[int, tuple[np.ndarray, np.ndarray]], q: int) -> list[tuple[float, int]]:
        every = [(float(s), int(i)) for scores, ids in answers.values() for s, i in zip(scores[q], ids[q], strict=True)]
        return sorted((hit for hit in every if hit[1] >= 0), key=lambda hit: (-hit[0], hit[1]))

    for q in range(queries):
        assert hits(kept, q) == hits(ranked, q)[:k]
        for shard, (_, ids) in kept.items():
            assert all(i % 4 == shard for i in ids[q] if i >= 0)  # each hit stays with its shard
