"""The search benchmark's exact baseline: a gallery too large for one in-memory index is searched exactly a
stored file at a time, with the same answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cluster.collections.manifest import Collections, Manifest
from cluster.storage import LocalStore
from jobs.bench import search
from jobs.bench.synthetic import FaceStatistics


def _statistics() -> FaceStatistics:
    rng = np.random.default_rng(3)
    embeddings = {}
    for person in range(20):
        centre = rng.standard_normal(128)
        for photo in range(3):
            vector = centre + 0.3 * rng.standard_normal(128)
            embeddings[f"p{person}/{photo}"] = (vector / np.linalg.norm(vector)).astype(np.float32)
    return FaceStatistics.fit(embeddings)


def test_a_gallery_past_the_memory_bound_gets_the_same_exact_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search, "ROWS_PER_FILE", 1000)  # several files
    answers = []
    for bound in (search.EXACT_IN_MEMORY_BYTES, 0):
        monkeypatch.setattr(search, "EXACT_IN_MEMORY_BYTES", bound)
        collections = Collections(LocalStore(tmp_path / str(bound)))
        manifest = collections.create(Manifest(name="bench", model_id="sface-2021dec", model_sha256="x"))
        files, gallery = search.write_gallery(collections, manifest, _statistics(), 5000, 50, seed=1)
        assert len(files) == 5 and gallery.faces == 5000
        answers.append(gallery)
    in_memory, streamed = answers
    assert in_memory.baseline_times and not streamed.baseline_times  # no single-query time for a streamed one
    np.testing.assert_array_equal(in_memory.exact_ids, streamed.exact_ids)
    assert search.mate_recall(streamed.exact_ids.tolist(), streamed.probe_identity) > 0.5
