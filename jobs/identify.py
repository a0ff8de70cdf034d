"""Open-set identification (1:N), as NIST's face recognition evaluations report it, through the product's own index
job and search path: galleries of enrolled people, mated probes (another photo of an enrolled person) and non-mated
probes (people never enrolled). FNIR: mated searches whose person is not the top candidate above the threshold.
FPIR: non-mated searches that return any candidate above it. And the per-search promise measured: strangers above
the threshold the promise implies, per non-mated search."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cluster.collections.manifest import DEFAULT_MAX_FALSE_CANDIDATES, DEFAULT_MAX_FALSE_MATCH_RATE
from cluster.errors import NoFaceInProbe
from cluster.indexing.embedder import IndexRequest
from cluster.keys.access import local_operator
from cluster.settings import Settings
from cluster.shards.set import ShardSet
from jobs.evaluate import LabelNoise

FPIR_POINTS = ("0.1", "0.01", "0.003")
COLLECTION = "identify"
# Loose, so that every search returns its top candidates whatever their score: the thresholds are applied here,
# after the search, to trace FNIR against FPIR. The promise is measured at the threshold it implies.
EVAL_FLOOR_RATE = 0.1
CANDIDATES = 20
BOOTSTRAPS, BOOTSTRAP_SEED = 2000, 24
SEARCH = {"purpose": "system-test", "case_id": "EVAL-IDENTIFY"}


def galleries(images: Path, noise: LabelNoise) -> tuple[dict[str, tuple[list[str], list[str]]], list[str]]:
    """Two galleries of the people with two photos or more (one photo each; all but one each), each with one
    mated probe per person; and the non-mated probes: one photo of each person with a single photo, unless the
    reviewed label noise says that person is enrolled under another name."""
    photos: dict[str, list[str]] = defaultdict(list)
    for path in sorted(images.glob("*/*.jpg")):
        photos[path.parent.name].append(f"{path.parent.name}/{path.name}")
    enrolled = {folder: names for folder, names in photos.items() if len(names) >= 2}
    identities = {noise.person(name) for names in enrolled.values() for name in names}
    nonmated = [names[0] for names in photos.values() if len(names) == 1 and noise.person(names[0]) not in identities]
    return {
        "one_photo_each": ([n[0] for n in enrolled.values()], [n[1] for n in enrolled.values()]),
        "all_but_one_each": ([p for n in enrolled.values() for p in n[:-1]], [n[-1] for n in enrolled.values()]),
    }, nonmated


def _person(match: Any, noise: LabelNoise) -> str:
    source = Path(match.source or match.external_image_id or "")
    return noise.person(f"{source.parent.name}/{source.name}")


async def _run(
    settings: Settings,
    images: Path,
    gallery: list[str],
    probes: list[tuple[str, bool]],
    model_id: str,
    noise: LabelNoise,
    say: Callable[[str], None],
) -> dict[str, Any]:
    from serving.usecases import collections, indexing, search
    from serving.usecases.context import Context
    from serving.usecases.policy import SearchRequest

    root = Path(tempfile.mkdtemp(prefix="facegrid-identify-"))
    source = root / "gallery"
    for name in gallery:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).symlink_to(images / name)
    ctx = Context(settings.model_copy(update={"store": str(root / "store")}))
    caller = local_operator()
    try:
        await collections.create(ctx, caller, COLLECTION, 1, EVAL_FLOOR_RATE, model=model_id, promise=None)
        say(f"indexing a gallery of {len(gallery)} photos")
        asked = {"collection": COLLECTION, "source": str(source), "max_faces": 1, "quality_filter": "NONE"}
        request = IndexRequest.model_validate(asked)
        summary = await indexing.index(ctx, caller, request)
        manifest = await ctx.read_manifest(COLLECTION, fresh=True)
        if manifest.face_count < len(gallery) // 2:
            raise RuntimeError(f"the gallery's {len(gallery)} photos gave {manifest.face_count} faces: {summary}")
        rates = ctx.models.rates(manifest)
        say(f"{len(probes)} searches")
        tops: list[tuple[bool, bool, float]] = []  # (mated, top candidate is the mate, its similarity)
        scores: list[list[tuple[str, float]]] = []  # every candidate's person and similarity, of non-mated searches
        each = SearchRequest(SEARCH["purpose"], SEARCH["case_id"], None, CANDIDATES)
        for name, mated in probes:
            try:
                answer = await search.search(ctx, caller, COLLECTION, (images / name).read_bytes(), each)
            except NoFaceInProbe:
                tops.append((mated, False, -1.0))
                continue
            matches = answer.matches
            top = matches[0] if matches else None
            hit = top is not None and _person(top, noise) == noise.person(name)
            tops.append((mated, hit, top.similarity if top else -1.0))
            if not mated:
                scores.append([(_person(m, noise), m.similarity) for m in matches])
        return {"faces": manifest.face_count, "indexed": summary, "tops": tops, "scores": scores, "rates": rates}
    finally:
        if COLLECTION in ctx.collections.names():  # its shard actors are named by collection: the next run's own
            ShardSet(ctx.settings, COLLECTION).retire(ctx.collections.get(COLLECTION))
        ctx.close()
        shutil.rmtree(root, ignore_errors=True)


def _figures(run: dict[str, Any], promise: float) -> dict[str, Any]:
    from scipy.stats import chi2

    mated = [(hit, s) for is_mated, hit, s in run["tops"] if is_mated]
    nonmated_tops = np.sort([s for is_mated, _, s in run["tops"] if not is_mated])[::-1]
    n = len(nonmated_tops)

    at_fpir, thresholds = {}, {}
    for label in FPIR_POINTS:
        allowed = int(np.floor(float(label) * n))  # non-mated searches that may return a candidate
        threshold = float(np.nextafter(nonmated_tops[allowed], np.inf)) if allowed < n else -1.0
        at_fpir[label], thresholds[label] = _fnir(mated, threshold), round(threshold, 4)
    faces, rates = run["faces"], run["rates"]
    # What a search of a collection made today applies: the default floor, tightened by the promise.
    implied = max(rates.floor(DEFAULT_MAX_FALSE_MATCH_RATE), rates.search_threshold(promise, faces))
    # Per non-mated search: faces above the threshold, and the distinct people they show (all strangers here).
    faces_above = np.array([sum(1 for _, s in found if s >= implied) for found in run["scores"]])
    people_above = np.array([len({person for person, s in found if s >= implied}) for found in run["scores"]])
    strangers, false_faces = int(people_above.sum()), int(faces_above.sum())
    # A stranger in one search is an event of its own: an exact Poisson bound on their count. Faces are not: one
    # stranger with five photos enrolled brings five at once, so their bound resamples whole searches.
    upper = chi2.ppf(0.95, 2 * (strangers + 1)) / 2
    resampled = np.random.default_rng(BOOTSTRAP_SEED).choice(faces_above, (BOOTSTRAPS, n)).mean(axis=1) if n else [0]
    return {
        "gallery_faces": faces,
        "mated_searches": len(mated),
        "nonmated_searches": n,
        "fnir_at_fpir": at_fpir,
        "threshold_at_fpir": thresholds,
        "promise": promise,
        "promise_threshold": round(implied, 4),
        "fnir_at_promise": _fnir(mated, implied),
        "fpir_at_promise": round(float((nonmated_tops >= implied).mean()), 4) if n else None,
        "strangers": strangers,
        "strangers_per_nonmated_search": round(strangers / max(n, 1), 5),
        "strangers_per_nonmated_search_upper_95": round(float(upper) / max(n, 1), 5),
        "false_candidates": false_faces,
        "false_candidates_per_nonmated_search": round(false_faces / max(n, 1), 5),
        "false_candidates_per_nonmated_search_upper_95": round(float(np.quantile(resampled, 0.95)), 5),
        "curve": _curve(mated, nonmated_tops),
    }


def _fnir(mated: list[tuple[bool, float]], threshold: float) -> float:
    """Mated searches whose person is not the top candidate at or above `threshold`."""
    return round(sum(1 for hit, s in mated if not (hit and s >= threshold)) / max(len(mated), 1), 4)


def _curve(mated: list[tuple[bool, float]], nonmated_tops: np.ndarray) -> list[list[float]]:
    """(FPIR, FNIR) at each non-mated top score, for the plot."""
    points = []
    for k in range(1, len(nonmated_tops)):
        points.append([k / len(nonmated_tops), _fnir(mated, float(nonmated_tops[k - 1]))])
    return points


def evaluate_identification(
    settings: Settings,
    images: Path,
    model_id: str,
    out: Path | None,
    promise: float = DEFAULT_MAX_FALSE_CANDIDATES,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    noise = LabelNoise.load()
    images = images.resolve()  # the gallery links to the photos from another folder
    made, nonmated = galleries(images, noise)
    result: dict[str, Any] = {"model_id": model_id, "galleries": {}}
    for name, (gallery, mated) in made.items():
        probes = [(p, True) for p in mated] + [(p, False) for p in nonmated]
        run = asyncio.run(_run(settings, images, gallery, probes, model_id, noise, say))
        result["galleries"][name] = {**_figures(run, promise), "gallery_photos": len(gallery)}
    first = result["galleries"]["one_photo_each"]
    for key in ("fnir_at_fpir", "promise", "promise_threshold", "fnir_at_promise", "nonmated_searches"):
        result[key] = first[key]
    for key in ("strangers_per_nonmated_search", "false_candidates_per_nonmated_search"):
        result[key], result[f"{key}_upper_95"] = first[key], first[f"{key}_upper_95"]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        result["plot"] = str(_plot(out / f"lfw-dev-identify-{model_id}.png", result))
    for figures in result["galleries"].values():
        figures.pop("curve")
    return result


def _plot(path: Path, result: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.5))
    for name, figures in result["galleries"].items():
        curve = np.array(figures["curve"])
        if len(curve):
            axes.plot(curve[:, 0], curve[:, 1], label=name.replace("_", " "))
    axes.set_xscale("log")
    axes.set_xlabel("FPIR (non-mated searches returning a candidate)")
    axes.set_ylabel("FNIR (mated searches missing their person)")
    axes.set_title(f"lfw-dev open-set identification, {result['model_id']}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
