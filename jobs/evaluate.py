"""LFW-style verification: accuracy, FNMR at fixed FMR, ROC/DET plots, and the calibration stored in the model card."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cluster.collections.manifest import DEFAULT_MAX_FALSE_MATCH_RATE
from cluster.errors import RateNotSupported
from cluster.models.calibration import build_calibration, floor_similarity
from cluster.models.faces import FacePipeline
from cluster.models.registry import embedding_of
from cluster.pipeline.errors import ImageError

BATCH = 32


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    same: bool


def read_pairs(path: Path, limit: int | None) -> list[Pair]:
    with path.open() as handle:
        rows = [Pair(r["a"], r["b"], r["same"] == "1") for r in csv.DictReader(handle, delimiter="\t")]
    if limit is None:
        return rows
    same = [p for p in rows if p.same][:limit]
    different = [p for p in rows if not p.same][:limit]
    return same + different


def embed_central_faces(
    pipeline: FacePipeline, images: Path, names: list[str], progress: Callable[[int], None] | None = None
) -> dict[str, np.ndarray]:
    """One unit embedding per image: the face nearest the centre, as LFW's photos are cropped around their subject."""
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(names), BATCH):
        batch = names[start : start + BATCH]
        results = pipeline([(images / name).read_bytes() for name in batch])
        for name, result in zip(batch, results, strict=True):
            if isinstance(result, ImageError) or not result.faces:
                continue
            centre = np.array([result.width, result.height]) / 2
            face = min(result.faces, key=lambda f: float(np.sum(((f.bbox[:2] + f.bbox[2:]) / 2 - centre) ** 2)))
            assert face.embedding is not None
            found[name] = face.embedding
        if progress:
            progress(len(batch))
    return found


def impostor_similarities(embeddings: dict[str, np.ndarray]) -> np.ndarray:
    """Similarities of every pair of images of different people (LFW folders name the person)."""
    names = sorted(embeddings)
    people = np.array([n.split("/")[0] for n in names])
    vectors = np.stack([embeddings[n] for n in names])
    chunks = []
    for start in range(0, len(names), 512):
        sims = vectors[start : start + 512] @ vectors.T
        rows = np.arange(start, min(start + 512, len(names)))
        # Upper triangle only, and only pairs of different people.
        mask = (np.arange(len(names))[None, :] > rows[:, None]) & (people[None, :] != people[rows][:, None])
        chunks.append(sims[mask])
    return np.concatenate(chunks) if chunks else np.zeros(0)


def floor_check(
    embeddings: dict[str, np.ndarray],
    pairs: list[Pair],
    sims: np.ndarray,
    impostor: np.ndarray,
    calibration: dict[str, Any],
    rate: float = DEFAULT_MAX_FALSE_MATCH_RATE,
) -> dict[str, Any]:
    """Does the floor keep its promise? At the default floor: false matches among the listed different-person pairs
    and among all impostor comparisons. Out of sample: calibrate on half the people (split by a hash of the name)
    and count false matches among the other half, at every rate that half can support."""
    threshold = floor_similarity(rate, calibration)
    different = np.array([not p.same for p in pairs]) & ~np.isnan(sims)
    listed = sims[different]
    people = sorted({name.split("/")[0] for name in embeddings})
    first = {p for p in people if int(hashlib.sha256(p.encode()).hexdigest(), 16) % 2 == 0}
    halves = [{n: v for n, v in embeddings.items() if (n.split("/")[0] in first) == side} for side in (True, False)]
    half_calibration = build_calibration(np.zeros(0), impostor_similarities(halves[0]))
    held_out = impostor_similarities(halves[1])
    heldout = []
    for check in (1e-3, 1e-4, 3e-5, rate):
        try:
            at = floor_similarity(check, half_calibration)
        except RateNotSupported:
            continue  # too few comparisons in half the photos to measure this rate
        false = int((held_out >= at).sum())
        heldout.append({"promised_fmr": check, "false_matches": false, "fmr": false / max(len(held_out), 1)})
    return {
        "promised_fmr": rate,
        "threshold": round(threshold, 6),
        "listed_different_pairs": int(different.sum()),
        "listed_false_matches": int((listed >= threshold).sum()),
        "all_impostor_comparisons": len(impostor),
        "all_impostor_false_matches": int((impostor >= threshold).sum()),
        "heldout_comparisons": len(held_out),
        "heldout": heldout,
    }


def _plots(out: Path, genuine: np.ndarray, impostor: np.ndarray) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = np.linspace(-1, 1, 2001)
    imp_sorted, gen_sorted = np.sort(impostor), np.sort(genuine)
    fmr = 1 - np.searchsorted(imp_sorted, thresholds, side="right") / len(imp_sorted)
    fnmr = np.searchsorted(gen_sorted, thresholds, side="left") / len(gen_sorted)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, y, ylabel, ylog in (("roc.png", 1 - fnmr, "true match rate", False), ("det.png", fnmr, "FNMR", True)):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.plot(np.maximum(fmr, 1e-9), np.maximum(y, 1e-9) if ylog else y)
        ax.set_xscale("log")
        if ylog:
            ax.set_yscale("log")
            ax.set_ylim(0.5 / max(len(genuine), 1), 1.1)  # below one miss in all genuine pairs nothing is measured
        ax.set_xlim(1e-7, 1)
        ax.set_xlabel("false match rate (FMR)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"facegrid on lfw-dev: {name[:3].upper()}")
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(str(out / name))
    return written


def _cross_validated_accuracy(sims: np.ndarray, labels: np.ndarray, folds: int = 10) -> float:
    """The LFW protocol: choose the threshold on nine folds, score the tenth."""
    index = np.arange(len(sims))
    correct = 0
    candidates = np.unique(sims)
    for k in range(folds):
        test = index % folds == k
        train_sims, train_labels = sims[~test], labels[~test]
        accuracy = [((train_sims >= t) == train_labels).mean() for t in candidates[:: max(1, len(candidates) // 2000)]]
        best = candidates[:: max(1, len(candidates) // 2000)][int(np.argmax(accuracy))]
        correct += int(((sims[test] >= best) == labels[test]).sum())
    return correct / len(sims)


def _best_threshold(sims: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The single threshold with the best accuracy over all pairs (how each model's match_similarity was chosen)."""
    candidates = np.unique(np.round(sims, 3))
    accuracy = np.array([((sims >= t) == labels).mean() for t in candidates])
    best = int(np.argmax(accuracy))
    return {"best_threshold": float(candidates[best]), "accuracy_at_best_threshold": round(float(accuracy[best]), 5)}


def evaluate_lfw(
    pipeline: FacePipeline,
    images: Path,
    pairs_path: Path,
    limit: int | None,
    out: Path | None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    pairs = read_pairs(pairs_path, limit)
    names = sorted({p.a for p in pairs} | {p.b for p in pairs})
    embeddings = embed_central_faces(pipeline, images, names, progress)
    # A pair with no face on either side is an error: predicted "different" when same, kept as a miss either way.
    sims = np.array(
        [float(embeddings[p.a] @ embeddings[p.b]) if p.a in embeddings and p.b in embeddings else np.nan for p in pairs]
    )
    labels = np.array([p.same for p in pairs])
    failed = np.isnan(sims)
    threshold = embedding_of(pipeline.model_id).match_similarity
    correct = (sims >= threshold) == labels
    correct[failed] = False
    genuine = sims[labels & ~failed]
    impostor = impostor_similarities(embeddings)
    calibration = build_calibration(genuine, impostor, failed_genuine=int((labels & failed).sum()))
    filled = np.where(failed, np.where(labels, -1.0, 1.0), sims)
    result: dict[str, Any] = {
        "model_id": pipeline.model_id,
        "pairs": len(pairs),
        "same_pairs": int(labels.sum()),
        "different_pairs": int((~labels).sum()),
        "failed_pairs": int(failed.sum()),
        "images": len(names),
        "images_without_face": len(names) - len(embeddings),
        "threshold": threshold,
        "accuracy": round(float(correct.mean()), 5),
        "accuracy_10fold": round(_cross_validated_accuracy(filled, labels), 5),
        **_best_threshold(filled, labels),
        "impostor_comparisons": len(impostor),
        "fnmr_at_fmr_1e-3": calibration["fnmr_at_fmr"]["1e-3"],
        "fnmr_at_fmr_1e-4": calibration["fnmr_at_fmr"]["1e-4"],
        "fnmr_at_fmr_1e-5": calibration["fnmr_at_fmr"]["1e-5"],
        "similarity_at_fmr_1e-3": calibration["similarity_at_fmr"]["1e-3"],
        "similarity_at_fmr_1e-4": calibration["similarity_at_fmr"]["1e-4"],
        "similarity_at_fmr_1e-5": calibration["similarity_at_fmr"]["1e-5"],
    }
    if out is not None:
        result["plots"] = _plots(out, genuine, impostor)
        (out / "lfw.json").write_text(json.dumps(result, indent=2))
    try:
        result["floor_check"] = floor_check(embeddings, pairs, sims, impostor, calibration)
    except RateNotSupported as exc:  # too few photos for the default floor: say so rather than pretend
        result["floor_check"] = {"error": exc.message}
    result["calibration"] = calibration
    return result
