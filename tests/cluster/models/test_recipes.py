"""Recipes: named, resolved from what a user asks, pinned by collections; a mirroring recipe's pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cluster.collections.manifest import Manifest
from cluster.errors import ModelMismatch
from cluster.models.recipes import ALIASES, DEFAULT_RECIPE, RECIPES, UnknownRecipe, plain_recipe, recipe, resolve
from cluster.models.registry import DLIB_ID, PUBLISHED_CALIBRATIONS, SFACE_ID


def test_todays_pipelines_are_recipes_and_aliases_name_recipes() -> None:
    assert plain_recipe(SFACE_ID).name == "mtcnn-sface" and plain_recipe(DLIB_ID).name == "mtcnn-dlib"
    assert {"default", "accurate"} <= set(ALIASES) and set(ALIASES.values()) <= set(RECIPES)
    assert recipe("default").name == DEFAULT_RECIPE
    assert all(r.calibration_name == r.model_id for r in RECIPES.values() if r.is_plain)


def test_every_recipe_ships_its_own_calibration() -> None:
    """Measured by `facegrid eval lfw --recipe R --save-calibration` and kept in the package, naming its recipe."""
    for each in RECIPES.values():
        shipped = json.loads((PUBLISHED_CALIBRATIONS / f"{each.calibration_name}.json").read_text())
        assert shipped.get("recipe", each.name) == each.name and shipped["tail"]["table"]


def test_a_new_collection_gets_what_was_asked() -> None:
    assert resolve(None, None) == recipe("default")
    assert resolve(None, DLIB_ID) == plain_recipe(DLIB_ID)
    assert resolve("accurate", None) == recipe(ALIASES["accurate"])
    assert resolve("mtcnn-sface-mirror", SFACE_ID).mirror
    with pytest.raises(ModelMismatch, match="recipe mtcnn-sface-mirror embeds with sface-2021dec, not dlib"):
        resolve("mtcnn-sface-mirror", DLIB_ID)
    with pytest.raises(UnknownRecipe, match="unknown recipe 'fast'; this build has mtcnn-sface, mtcnn-dlib"):
        resolve("fast", None)


def test_collections_made_before_recipes_keep_their_models_plain_recipe() -> None:
    old = Manifest(name="old", model_id=DLIB_ID, model_sha256="0" * 64)
    assert old.recipe is None and old.face_recipe == plain_recipe(DLIB_ID)
    new = Manifest(name="new", model_id=SFACE_ID, model_sha256="0" * 64, recipe="yunet-sface")
    assert new.face_recipe.detector == "yunet"


def test_a_mirroring_recipe_averages_each_chip_with_its_mirror(settings, registry, pipeline, lfw_images) -> None:  # type: ignore[no-untyped-def]
    from cluster.models.faces import FacePipeline
    from tests.conftest import lfw_photos

    mirrored = FacePipeline(settings, registry, recipe=recipe("mtcnn-sface-mirror"))
    blobs = [p.read_bytes() for p in lfw_photos(lfw_images, 4)]
    plain = np.stack([r.faces[0].embedding for r in pipeline(blobs)])
    both = np.stack([r.faces[0].embedding for r in mirrored(blobs)])
    assert np.allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(plain * both, axis=1)
    assert np.all(cosines > 0.9) and np.all(cosines < 0.9999)  # the same faces, not the same vectors
    images = pipeline.decode(blobs)
    chips = np.stack([pipeline.align(i, pipeline.detect([i])[0].landmarks[:1])[0] for i in images])
    flipped = mirrored.embed_chips([chips[:, :, ::-1]])
    assert np.allclose(flipped, mirrored.embed_chips([chips]), atol=2e-3)  # a chip and its mirror: one embedding


def test_a_fused_recipes_vectors_hold_the_fused_score_exactly(settings, registry, lfw_images) -> None:  # type: ignore[no-untyped-def]
    """Joined and scaled, the two models' unit vectors are one unit vector whose inner products are
    w * s1 + (1 - w) * s2: the index searches the fused score itself."""
    from dataclasses import replace

    from cluster.models.faces import FacePipeline
    from tests.conftest import lfw_photos

    fused = next(r for r in RECIPES.values() if r.fused_with is not None)
    assert fused.dim == 256 and 0 < fused.fusion_weight < 1 and not fused.is_plain
    first = replace(fused, name="first", fused_with=None, fusion_weight=1.0)
    second = replace(first, name="second", model_id=fused.fused_with)
    blobs = [p.read_bytes() for p in lfw_photos(lfw_images, 3, 2)]
    vectors = [
        np.stack([r.faces[0].embedding for r in FacePipeline(settings, registry, recipe=each)(blobs)])
        for each in (first, second, fused)
    ]
    assert vectors[2].shape == (6, 256) and np.allclose(np.linalg.norm(vectors[2], axis=1), 1.0, atol=1e-5)
    s1, s2, joined = (v @ v.T for v in vectors)
    w = fused.fusion_weight
    assert np.allclose(joined, w * s1 + (1 - w) * s2, atol=1e-5)


def test_a_fused_collection_pins_both_models_files(registry) -> None:  # type: ignore[no-untyped-def]
    from cluster.indexing.job import check_model

    fused = next(r for r in RECIPES.values() if r.fused_with is not None)
    pinned = registry.pin(fused.model_id)
    second = registry.pin(DLIB_ID)["model_sha256"]
    manifest = Manifest(name="f", **pinned, recipe=fused.name, fused_model_sha256=second)
    check_model(manifest, registry, None, fused.name)
    with pytest.raises(ModelMismatch, match=f"indexed with {DLIB_ID} \\(000000000000\\)"):
        check_model(manifest.model_copy(update={"fused_model_sha256": "0" * 64}), registry, None)
