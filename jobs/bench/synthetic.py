"""Synthetic face embeddings with the statistics of real ones, fitted to our model's embeddings of lfw-dev.

Identity centres are drawn from a Gaussian fitted to the per-person mean embeddings (its covariance corrected for
the noise a mean of a few photos still carries); a person's samples scatter around their centre with the pooled
within-person covariance of the same people. Isotropic vectors would have no cluster structure and would flatter
or mislead every index choice; these have the real spectrum, both between and within people.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from cluster.collections.records import face_schema
from cluster.models.registry import DEFAULT_EMBEDDER, ModelRegistry
from cluster.settings import Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _sqrtm(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root, negative eigenvalues (sampling noise) clipped to zero."""
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


@dataclass(frozen=True)
class FaceStatistics:
    mean: np.ndarray  # of the identity centres
    between: np.ndarray  # square root of the centres' covariance
    within: np.ndarray  # square root of the pooled within-person covariance
    people: int
    photos: int
    mate_similarity: float  # mean cosine of two photos of one person, measured
    impostor_similarity: float  # mean cosine of photos of two people, measured

    @classmethod
    def fit(cls, embeddings: dict[str, np.ndarray]) -> FaceStatistics:
        """From unit embeddings keyed 'person/photo'; people with fewer than two photos are left out."""
        by_person: dict[str, list[np.ndarray]] = defaultdict(list)
        for name, vector in sorted(embeddings.items()):
            by_person[name.split("/")[0]].append(vector)
        groups = [np.stack(v) for v in by_person.values() if len(v) >= 2]
        if len(groups) < 10:
            raise ValueError("fitting needs at least 10 people with two or more photos")
        means = np.stack([g.mean(0) for g in groups])
        deviations = np.concatenate([g - g.mean(0) for g in groups])
        within = deviations.T @ deviations / sum(len(g) - 1 for g in groups)
        # A person's mean of n photos scatters by within/n around their true centre: take that out.
        noise = within * float(np.mean([1 / len(g) for g in groups]))
        between = np.cov(means, rowvar=False) - noise
        mates = np.concatenate([(g @ g.T)[np.triu_indices(len(g), 1)] for g in groups])
        firsts = np.stack([g[0] for g in groups])
        impostors = (firsts @ firsts.T)[np.triu_indices(len(groups), 1)]
        return cls(
            mean=means.mean(0),
            between=_sqrtm(between),
            within=_sqrtm(within),
            people=len(groups),
            photos=sum(len(g) for g in groups),
            mate_similarity=float(mates.mean()),
            impostor_similarity=float(impostors.mean()),
        )

    def centres(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return (self.mean + rng.standard_normal((count, len(self.mean))) @ self.between).astype(np.float32)

    def samples(self, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One unit vector around each given centre."""
        noise = rng.standard_normal(centres.shape).astype(np.float32) @ self.within.astype(np.float32)
        vectors = centres + noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors.astype(np.float32)

    def check(self, rng: np.random.Generator, identities: int = 2000) -> dict[str, float]:
        """The generated vectors' mean mate and impostor similarity, beside the measured ones."""
        centres = self.centres(identities, rng)
        a, b = self.samples(centres, rng), self.samples(centres, rng)
        return {
            "fit_people": self.people,
            "fit_photos": self.photos,
            "real_mate_similarity": round(self.mate_similarity, 4),
            "synthetic_mate_similarity": round(float(np.mean(np.sum(a * b, 1))), 4),
            "real_impostor_similarity": round(self.impostor_similarity, 4),
            "synthetic_impostor_similarity": round(float(np.mean(np.sum(a[:-1] * b[1:], 1))), 4),
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            mean=self.mean,
            between=self.between,
            within=self.within,
            counts=np.array([self.people, self.photos]),
            similarities=np.array([self.mate_similarity, self.impostor_similarity]),
        )

    @classmethod
    def load(cls, path: Path) -> FaceStatistics:
        data = np.load(path)
        return cls(
            data["mean"],
            data["between"],
            data["within"],
            int(data["counts"][0]),
            int(data["counts"][1]),
            float(data["similarities"][0]),
            float(data["similarities"][1]),
        )


def fitted_statistics(
    settings: Settings,
    images: Path,
    model_id: str = DEFAULT_EMBEDDER,
    progress: Callable[[int], None] | None = None,
) -> FaceStatistics:
    """Fit to one model's embeddings of `images` (a folder per person); cached by model file and file list."""
    from cluster.models.faces import FacePipeline
    from jobs.evaluate import embed_central_faces

    names = sorted(p.relative_to(images).as_posix() for p in images.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
    counts: dict[str, int] = defaultdict(int)
    for name in names:
        counts[name.split("/")[0]] += 1
    names = [n for n in names if counts[n.split("/")[0]] >= 2]
    registry = ModelRegistry(settings.model_dir)
    registry.build_all()
    card = registry.card(model_id) or {}
    digest = hashlib.sha256("\n".join([card.get("sha256", ""), *names]).encode()).hexdigest()[:16]
    cache = settings.model_dir / "fits" / f"face-statistics-{digest}.npz"
    if cache.exists():
        return FaceStatistics.load(cache)
    embeddings = embed_central_faces(FacePipeline(settings, registry, model_id), images, names, progress)
    statistics = FaceStatistics.fit(embeddings)
    statistics.save(cache)
    return statistics


def face_records(vectors: np.ndarray, start: int, per_identity: int) -> pa.Table:
    """Face records for synthetic vectors: ids start + 1, ..., identity (id - 1) // per_identity in the names."""
    n = len(vectors)
    ids = np.arange(start, start + n, dtype=np.int64) + 1
    owner = (ids - 1) // per_identity
    names = [f"synthetic/{o}/{i}" for o, i in zip(owner.tolist(), ids.tolist(), strict=True)]
    columns = {
        "face_id": pa.array([f"{i:016x}" for i in ids.tolist()]),
        "faiss_id": pa.array(ids),
        "external_image_id": pa.array(names),
        "source_key": pa.array(["synthetic://" + name for name in names]),
        "source_etag": pa.array([""] * n),
        "face_index": pa.array(np.zeros(n, np.int32)),
        "bbox": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4 * n, np.float32)), 4),
        "landmarks": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(10 * n, np.float32)), 10),
        "confidence": pa.array(np.ones(n, np.float32)),
        "quality": pa.array(["{}"] * n),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
        "job_id": pa.array(["bench"] * n),
        "indexed_at": pa.array(np.full(n, np.datetime64(datetime.now(UTC).replace(tzinfo=None), "ms"))),
    }
    return pa.Table.from_pydict(columns).cast(face_schema(vectors.shape[1]))
