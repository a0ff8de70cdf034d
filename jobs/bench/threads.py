"""Benchmark: how an embedder uses a machine's cores. One process with one thread, one process with two, and two
processes of one thread each (an index job's layout: one actor a core), at two batch sizes, on real chips."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cluster.models.faces import FacePipeline
from cluster.models.recipes import Recipe
from cluster.models.registry import ModelRegistry
from cluster.pipeline.runtime import Precision, create_session
from cluster.settings import RuntimeSettings, Settings
from jobs.bench.embed import _images, _own_chips

BATCHES = (8, 32)
CHIPS = 384


def _chips_per_s(model: Path, precision: Precision, threads: int, batch: int, chips_file: str) -> float:
    chips = np.load(chips_file)
    session = create_session(model, RuntimeSettings(intra_op_threads=threads), precision)
    for start in range(0, min(64, len(chips)), batch):  # warm-up
        session.run(["descriptors"], {"chips": chips[start : start + batch]})
    began = time.perf_counter()
    for start in range(0, len(chips), batch):
        session.run(["descriptors"], {"chips": chips[start : start + batch]})
    return len(chips) / (time.perf_counter() - began)


def _in_child(args: tuple[Path, Precision, int, int, str], answers: Any) -> None:
    answers.put(_chips_per_s(*args))


def run_threads_benchmark(settings: Settings, folder: Path, recipe: Recipe) -> dict[str, Any]:
    """The recipe's first embedding model on chips of the first photos, chips a second in each layout."""
    single = settings.model_copy(update={"runtime": RuntimeSettings(intra_op_threads=1)})
    registry = ModelRegistry(settings.model_dir)
    pipeline = FacePipeline(single, registry, recipe=recipe)
    chips = _own_chips(pipeline, _images(folder, CHIPS), CHIPS, settings.max_image_pixels)[0]
    model, precision = registry.ensure(recipe.model_id), recipe.precision_of(recipe.model_id)
    spawn = multiprocessing.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        chips_file = str(Path(tmp) / "chips.npy")
        np.save(chips_file, chips)
        for batch in BATCHES:
            args = (model, precision, 1, batch, chips_file)
            one = _chips_per_s(*args)
            two = _chips_per_s(model, precision, 2, batch, chips_file)
            answers = spawn.Queue()
            children = [spawn.Process(target=_in_child, args=(args, answers)) for _ in range(2)]
            for child in children:
                child.start()
            both = answers.get() + answers.get()
            for child in children:
                child.join()
            rows.append(
                {
                    "batch": batch,
                    "one_process_one_thread": round(one, 1),
                    "one_process_two_threads": round(two, 1),
                    "two_processes_one_thread_each": round(both, 1),
                }
            )
    return {
        "recipe": recipe.name,
        "model_id": recipe.model_id,
        "precision": precision,
        "runs_on": pipeline.embed.session.get_providers()[0],  # type: ignore[attr-defined]
        "chips": len(chips),
        "cpu_count": os.cpu_count(),
        "chips_per_s": rows,
    }
