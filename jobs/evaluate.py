"""LFW-style verification: accuracy, FNMR at fixed FMR, ROC/DET plots, and the calibration stored in the model card."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cluster.collections.manifest import DEFAULT_MAX_FALSE_MATCH_RATE
from cluster.errors import RateNotSupported
from cluster.models.calibration import FLOOR_MARGIN, build_calibration, floor_similarity
from cluster.models.faces import FacePipeline
from cluster.models.registry import PUBLISHED_CALIBRATIONS, embedding_of
from cluster.models.tail import Tail, fit_tail
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


LABEL_NOISE = PUBLISHED_CALIBRATIONS / "lfw-dev-label-noise.json"


@dataclass(frozen=True)
class LabelNoise:
    """A reviewed list of what a data set's folders get wrong (cluster/models/calibrations/lfw-dev-label-noise.json):
    photos filed twice under two names, one person under two names, a photo of someone else. Impostor comparisons
    leave them out; each entry in the file says why."""

    same_photos: frozenset[frozenset[str]] = frozenset()
    alias_of: dict[str, str] = field(default_factory=dict)  # a name -> the one name its person is counted under
    shows: dict[str, str] = field(default_factory=dict)  # an image -> the person it shows

    @classmethod
    def load(cls, path: Path = LABEL_NOISE) -> LabelNoise:
        listed = json.loads(path.read_text())
        alias_of = {name: entry["names"][0] for entry in listed["aliases"] for name in entry["names"]}
        return cls(
            frozenset(frozenset(entry["images"]) for entry in listed["same_photos"]),
            alias_of,
            {entry["image"]: entry["shows"] for entry in listed["relabelled"]},
        )

    def person(self, image: str) -> str:
        name = self.shows.get(image, image.split("/")[0])
        return self.alias_of.get(name, name)

    def excluded(self, names: list[str]) -> list[tuple[int, int]]:
        """Index pairs (i < j) of these images that are one photograph."""
        where = {name: i for i, name in enumerate(names)}
        pairs = [sorted(where[n] for n in same) for same in self.same_photos if all(n in where for n in same)]
        return [(i, j) for i, j in pairs]


NO_NOISE = LabelNoise()


def impostor_similarities(embeddings: dict[str, np.ndarray], noise: LabelNoise = NO_NOISE) -> np.ndarray:
    """Similarities of every pair of images of different people (LFW folders name the person; `noise` corrects
    the folders where a reviewed list says they are wrong)."""
    names = sorted(embeddings)
    people = np.array([noise.person(n) for n in names])
    vectors = np.stack([embeddings[n] for n in names])
    same_photo = noise.excluded(names)
    chunks = []
    for start in range(0, len(names), 512):
        sims = vectors[start : start + 512] @ vectors.T
        rows = np.arange(start, min(start + 512, len(names)))
        # Upper triangle only, and only pairs of different people.
        mask = (np.arange(len(names))[None, :] > rows[:, None]) & (people[None, :] != people[rows][:, None])
        for i, j in same_photo:
            if start <= i < start + len(rows):
                mask[i - start, j] = False
        chunks.append(sims[mask])
    return np.concatenate(chunks) if chunks else np.zeros(0)


def floor_check(
    pairs: list[Pair],
    sims: np.ndarray,
    impostor: np.ndarray,
    calibration: dict[str, Any],
    half_calibration: dict[str, Any],
    held_out: np.ndarray,
    rate: float = DEFAULT_MAX_FALSE_MATCH_RATE,
) -> dict[str, Any]:
    """Does the floor keep its promise? At the default floor: false matches among the listed different-person pairs
    and among all impostor comparisons. Out of sample (`held_out`, see `out_of_sample`): the calibration of half the
    people, and false matches among the other half's comparisons at every rate that half can support."""
    threshold = floor_similarity(rate, calibration)
    different = np.array([not p.same for p in pairs]) & ~np.isnan(sims)
    listed = sims[different]
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
    figures = evaluate_embeddings(
        pipeline.model_id, embeddings, pairs, out, len(names), pipeline.recipe.match_similarity
    )
    return {**pipeline.recipe.describe(), **figures}


def evaluate_embeddings(
    model_id: str,
    embeddings: dict[str, np.ndarray],
    pairs: list[Pair],
    out: Path | None,
    images: int,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The figures of `evaluate_lfw` from the photos' embeddings (a name with none: no face was found)."""
    # A pair with no face on either side is an error: predicted "different" when same, kept as a miss either way.
    sims = np.array(
        [float(embeddings[p.a] @ embeddings[p.b]) if p.a in embeddings and p.b in embeddings else np.nan for p in pairs]
    )
    labels = np.array([p.same for p in pairs])
    failed = np.isnan(sims)
    threshold = embedding_of(model_id).match_similarity if threshold is None else threshold
    correct = (sims >= threshold) == labels
    correct[failed] = False
    genuine = sims[labels & ~failed]
    noise = LabelNoise.load()
    impostor = impostor_similarities(embeddings, noise)
    calibration = build_calibration(genuine, impostor, failed_genuine=int((labels & failed).sum()))
    filled = np.where(failed, np.where(labels, -1.0, 1.0), sims)
    result: dict[str, Any] = {
        "model_id": model_id,
        "pairs": len(pairs),
        "same_pairs": int(labels.sum()),
        "different_pairs": int((~labels).sum()),
        "failed_pairs": int(failed.sum()),
        "images": images,
        "images_without_face": images - len(embeddings),
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
        "tail": tail_figures(calibration, genuine, int((labels & failed).sum()), impostor_similarities(embeddings)),
    }
    if out is not None:
        result["plots"] = _plots(out, genuine, impostor)
        (out / "lfw.json").write_text(json.dumps(result, indent=2))
    half_calibration, held_out = out_of_sample(embeddings, noise)
    try:
        result["floor_check"] = floor_check(pairs, sims, impostor, calibration, half_calibration, held_out)
    except RateNotSupported as exc:  # too few photos for the default floor: say so rather than pretend
        result["floor_check"] = {"error": exc.message}
    result["tail_check"] = tail_check(half_calibration, held_out)
    result["calibration"] = calibration
    return result


TAIL_RATES = ("1e-5", "1e-6", "1e-7", "1e-8", "1e-9")


def tail_figures(
    calibration: dict[str, Any], genuine: np.ndarray, failed_genuine: int, as_filed: np.ndarray
) -> dict[str, Any]:
    """The fitted tail's similarity (estimate and upper bound) and FNMR at the bound for rates down to 1e-9, with
    the reviewed label noise left out (what the calibration uses) and as the folders file the photos."""

    def figures(tail: dict[str, Any] | None) -> dict[str, Any] | None:
        if tail is None:
            return None
        read, count = Tail(tail), len(genuine) + failed_genuine
        rows = {}
        for label in TAIL_RATES:
            upper = read.similarity(float(label))
            misses = int((genuine < upper).sum()) + failed_genuine
            rows[label] = {
                "similarity": round(read.similarity(float(label), bound=False), 4),
                "similarity_bound": round(upper, 4),
                "fnmr_at_bound": round(misses / max(count, 1), 4),
            }
        return {"threshold": tail["threshold"], "shape": tail["shape"], "scale": tail["scale"], "rates": rows}

    return {"label_noise_removed": figures(calibration.get("tail")), "as_filed": figures(fit_tail(as_filed))}


def halves(embeddings: dict[str, np.ndarray], noise: LabelNoise) -> list[dict[str, np.ndarray]]:
    """The photos split in two by person (a hash of the name the person is counted under): no one in both."""
    first = {n for n in embeddings if int(hashlib.sha256(noise.person(n).encode()).hexdigest(), 16) % 2 == 0}
    return [{n: v for n, v in embeddings.items() if (n in first) == side} for side in (True, False)]


def out_of_sample(embeddings: dict[str, np.ndarray], noise: LabelNoise) -> tuple[dict[str, Any], np.ndarray]:
    """The calibration of one half of the people (its tail fitted too), and the other half's impostor comparisons:
    what the floor and the tail are checked on, computed once for both."""
    fitted_on, held = halves(embeddings, noise)
    return build_calibration(np.zeros(0), impostor_similarities(fitted_on, noise)), impostor_similarities(held, noise)


def tail_check(
    half_calibration: dict[str, Any], held_out: np.ndarray, rates: tuple[float, ...] = (1e-5, 1e-6, 1e-7)
) -> dict[str, Any]:
    """Out of sample: the tail fitted on one half of the people, the other half's impostor comparisons counted
    above the threshold a search promising each rate applies (the tail's bound with the floor's margin), and above
    the bound alone. Within bounds when each count is at most the 99th percentile of a Poisson count whose mean
    is the promised rate times the comparisons (what a true rate at the promise would give)."""
    from scipy.stats import poisson

    tail = half_calibration.get("tail")
    if tail is None:
        return {"error": f"too few comparisons in half the photos to fit a tail ({len(held_out)})"}
    read = Tail(tail)
    rows = []
    for rate in rates:
        at = read.similarity(rate / FLOOR_MARGIN)
        count = int((held_out >= at).sum())
        allowed = int(poisson.ppf(0.99, rate * len(held_out)))
        rows.append(
            {
                "rate": rate,
                "similarity_bound": round(at, 4),
                "false_matches": count,
                "false_matches_without_margin": int((held_out >= read.similarity(rate)).sum()),
                "expected_at_most": round(rate * len(held_out), 2),
                "allowed": allowed,
                "within": count <= allowed,
            }
        )
    return {
        "fitted_comparisons": tail["comparisons"],
        "heldout_comparisons": len(held_out),
        "rates": rows,
        "within": all(r["within"] for r in rows),
    }
