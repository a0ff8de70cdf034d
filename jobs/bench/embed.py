"""Benchmark: our pipeline with one embedding model against dlib's reference pipeline (HOG, 5-point shape predictor,
descriptor), per core, on the same photos."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from cluster.errors import InvalidRequest
from cluster.indexing.embedder import READ_BATCH
from cluster.models.faces import FacePipeline
from cluster.models.recipes import RECIPES, Recipe, plain_recipe
from cluster.models.registry import DEFAULT_EMBEDDER, ModelRegistry
from cluster.pipeline.decode import decode_image
from cluster.settings import RuntimeSettings, Settings

BATCH_SIZES = (1, 8, 32, 128)


def _reference_models() -> tuple[Any, Any, Any]:
    import dlib
    import face_recognition_models

    folder = Path(face_recognition_models.__file__).parent / "models"
    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat")),
        dlib.face_recognition_model_v1(str(folder / "dlib_face_recognition_resnet_model_v1.dat")),
    )


def _images(folder: Path, limit: int) -> list[bytes]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]
    return [p.read_bytes() for p in paths]


def _own_chips(pipeline: FacePipeline, blobs: list[bytes], count: int, max_pixels: int) -> list[np.ndarray]:
    """Chips in each embedding model's own layout, from the first photos: what the embedders see in production."""
    chips: list[list[np.ndarray]] = [[] for _ in pipeline.embedders]
    for blob in blobs:
        image = decode_image(blob, max_pixels)
        for kept, layout in zip(chips, pipeline.chips_of(image, pipeline.detect([image])[0].landmarks), strict=True):
            kept.extend(layout)
        if len(chips[0]) >= count:
            break
    sizes = [align.aligner.chip_size for _, align in pipeline.embedders]
    return [
        np.stack(kept[:count]) if kept else np.zeros((0, size, size, 3), np.uint8)
        for kept, size in zip(chips, sizes, strict=True)
    ]


def _pipeline_figures(pipeline: FacePipeline, blobs: list[bytes]) -> dict[str, Any]:
    """One recipe end to end on the photos, in read batches as an index job takes them: photos/s on one core and
    each stage's ms a photo."""
    pipeline(blobs[:4])  # warm-up: session initialisation is not throughput
    pipeline.times.seconds.clear()
    started = time.perf_counter()
    found = [r for i in range(0, len(blobs), READ_BATCH) for r in pipeline(blobs[i : i + READ_BATCH])]
    seconds = time.perf_counter() - started
    return {
        "recipe": pipeline.recipe.name,
        "images_per_s": round(len(blobs) / seconds, 2),
        "faces": sum(len(r.faces) for r in found if not isinstance(r, Exception)),
        "images_without_face": sum(1 for r in found if not isinstance(r, Exception) and not r.faces),
        "ms_per_image_by_stage": {k: round(1000 * v / len(blobs), 2) for k, v in pipeline.times.seconds.items()},
    }


def run_embed_benchmark(
    settings: Settings, folder: Path, limit: int, console: Console, recipe: Recipe | None = None
) -> dict[str, Any]:
    """A recipe (default: the default model's plain one) against dlib's own pipeline and, for any other recipe,
    against MTCNN + SFace in fp32 (today's pipeline) in the same run, on one core each."""
    # Per core: one intra-op thread for ONNX Runtime; dlib's CPU path is single-threaded here too.
    single = settings.model_copy(update={"runtime": RuntimeSettings(intra_op_threads=1)})
    registry = ModelRegistry(settings.model_dir)
    pipeline = FacePipeline(single, registry, recipe=recipe or plain_recipe(DEFAULT_EMBEDDER))
    blobs = _images(folder, limit)
    console.print(f"{pipeline.recipe.name}: {len(blobs)} images")
    figures = _pipeline_figures(pipeline, blobs)
    ours_faces, ours_rate = figures["faces"], figures["images_per_s"]
    baseline_recipe = plain_recipe(DEFAULT_EMBEDDER)
    if pipeline.recipe != baseline_recipe:
        console.print(f"{baseline_recipe.name} (today's pipeline): {len(blobs)} images")
        baseline = _pipeline_figures(FacePipeline(single, registry, recipe=baseline_recipe), blobs)
        figures |= {"baseline": baseline, "speedup": round(ours_rate / baseline["images_per_s"], 2)}

    import dlib

    detector, predictor, recogniser = _reference_models()
    console.print(f"reference (dlib): {len(blobs)} images")
    chips = []
    started = time.perf_counter()
    for blob in blobs:
        image = decode_image(blob, settings.max_image_pixels)
        for rect in detector(image, 1):
            chip = dlib.get_face_chip(image, predictor(image, rect), 150, 0.25)
            recogniser.compute_face_descriptor(chip)
            chips.append(chip)
    reference_s = time.perf_counter() - started

    reference_sample = chips[:128]
    started = time.perf_counter()
    for chip in reference_sample:
        recogniser.compute_face_descriptor(chip)
    reference_embed = len(reference_sample) / (time.perf_counter() - started)
    sample = _own_chips(pipeline, blobs, 128, settings.max_image_pixels)
    per_batch, ms_per_face = {}, {}
    faces = len(sample[0])
    for size in BATCH_SIZES:
        for embed, _ in pipeline.embedders:
            embed.batch_size = size
        pipeline.embed_chips([layout[:size] for layout in sample])
        started = time.perf_counter()
        pipeline.embed_chips(sample)  # a mirroring recipe's chips cost two embeddings each, a fused one's two models
        seconds = time.perf_counter() - started
        per_batch[str(size)] = round(faces / seconds, 1)
        ms_per_face[str(size)] = round(1000 * seconds / max(faces, 1), 2)
    ours_embed = max(per_batch.values())
    reference_rate = len(blobs) / reference_s
    return {
        **figures,
        "model_id": pipeline.model_id,
        "images": len(blobs),
        "threads": 1,
        "cpu_count": os.cpu_count(),
        "ours_faces": ours_faces,
        "reference_faces": len(chips),
        "ours_images_per_s": round(ours_rate, 2),
        "reference_images_per_s": round(reference_rate, 2),
        "ratio": round(ours_rate / reference_rate, 2),
        "ours_embed_faces_per_s": ours_embed,
        "reference_embed_faces_per_s": round(reference_embed, 2),
        "embed_ratio": round(ours_embed / reference_embed, 2),
        "embed_faces_per_s_by_batch": per_batch,
        "embed_ms_per_face_by_batch": ms_per_face,
    }


def recipe_speeds(settings: Settings, folder: Path, photos: int) -> dict[str, float]:
    """Every recipe's photos a second on one core of this machine, end to end, over the first `photos` photos
    (`facegrid models list --measure`)."""
    single = settings.model_copy(update={"runtime": RuntimeSettings(intra_op_threads=1)})
    registry = ModelRegistry(settings.model_dir)
    blobs = _images(folder, photos)
    if not blobs:
        raise InvalidRequest(f"no .jpg, .jpeg or .png photos under {folder}")
    return {
        name: _pipeline_figures(FacePipeline(single, registry, recipe=each), blobs)["images_per_s"]
        for name, each in RECIPES.items()
    }
