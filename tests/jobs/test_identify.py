"""Open-set identification through the product's own index job and search path, on the first 150 people of
lfw-dev: both galleries measured, the promise's strangers per non-mated search reported with their bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.collections.manifest import DEFAULT_MAX_FALSE_CANDIDATES
from cluster.models.registry import SFACE_ID
from cluster.settings import Settings
from jobs.identify import FPIR_POINTS, evaluate_identification

pytestmark = pytest.mark.slow


def test_identification_figures_through_the_product(
    lfw_images: Path, settings: Settings, tmp_path: Path, local_ray: None
) -> None:
    people = tmp_path / "images"
    people.mkdir()
    for person in sorted(p for p in lfw_images.iterdir() if p.is_dir())[:150]:
        (people / person.name).symlink_to(person)
    result = evaluate_identification(settings, people, SFACE_ID, tmp_path / "out")
    assert Path(result["plot"]).stat().st_size > 0
    assert set(result["fnir_at_fpir"]) == set(FPIR_POINTS) and result["promise"] == DEFAULT_MAX_FALSE_CANDIDATES
    for gallery in ("one_photo_each", "all_but_one_each"):
        figures = result["galleries"][gallery]
        assert figures["mated_searches"] == 43 and figures["nonmated_searches"] == 107
        assert figures["fnir_at_fpir"]["0.1"] <= 0.1  # SFace finds nearly everyone at a loose FPIR
        assert figures["fnir_at_promise"] >= figures["fnir_at_fpir"]["0.1"]  # the promise costs recall, never gives
        assert (
            figures["false_candidates_per_nonmated_search"] <= figures["false_candidates_per_nonmated_search_upper_95"]
        )
        assert figures["strangers"] <= figures["false_candidates"]  # a stranger may bring several photos
        assert figures["strangers_per_nonmated_search"] <= figures["strangers_per_nonmated_search_upper_95"]
        assert figures["false_candidates"] <= 3  # at most 0.01 per search expected: 1 in 107 measured here
