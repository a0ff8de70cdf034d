"""The face pipeline composed: decode -> detect -> align -> quality -> embed, batch in, records out; no Ray needed."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from cluster.models.recipes import DETECTORS, YUNET, YUNET_ONET, Recipe, plain_recipe
from cluster.models.registry import DEFAULT_EMBEDDER, YUNET_ID, ModelRegistry, embedding_of
from cluster.pipeline.align import DLIB_ALIGNER, AlignFaces
from cluster.pipeline.decode import DecodeImages
from cluster.pipeline.detect import DetectFaces, ONetStage, onnx_net
from cluster.pipeline.detect_yunet import DetectFacesYuNet, DetectFacesYuNetONet
from cluster.pipeline.embed import EmbedFaces, embed_batch_size, normalize
from cluster.pipeline.errors import ImageError
from cluster.pipeline.quality import FaceQuality, QualityFilter, SkipReason, assess, reasons_to_skip
from cluster.pipeline.runtime import create_session
from cluster.settings import Settings


@dataclass
class Face:
    bbox: np.ndarray  # x1, y1, x2, y2 in pixels of the upright image
    landmarks: np.ndarray  # (5, 2)
    confidence: float
    quality: FaceQuality
    embedding: np.ndarray | None = None  # unit-length, of the pipeline's model, only for kept faces
    skip_reasons: list[SkipReason] = field(default_factory=list)


@dataclass
class ImageFaces:
    width: int
    height: int
    faces: list[Face]  # kept and embedded, largest first
    skipped: list[Face]  # found but not kept, each with its reasons


@dataclass
class StageTimes:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - started
        return now


class FacePipeline:
    """Loads one recipe's detector and embedding model once; call it with image bytes or decoded arrays, a batch at
    a time.

    One pipeline, one recipe: a collection's faces never mix models, chip layouts, mirroring or precision. Given a
    model id instead of a recipe, it is that model's plain recipe (MTCNN, fp32, no mirror)."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry | None = None,
        model_id: str = DEFAULT_EMBEDDER,
        recipe: Recipe | None = None,
    ):
        registry = registry or ModelRegistry(settings.model_dir)
        recipe = recipe or plain_recipe(model_id)
        model_id, detector = recipe.model_id, recipe.detector
        sessions = {
            name: create_session(registry.ensure(name), settings.runtime, recipe.precision_of(name))
            for name in (*DETECTORS[detector], *recipe.model_ids)
        }
        self.recipe, self.model_id, self.detector = recipe, model_id, detector
        self.model_sha256 = (registry.card(model_id) or {})["sha256"]
        self.decode = DecodeImages(settings.max_image_pixels)
        self.detect: DetectFaces | DetectFacesYuNet | DetectFacesYuNetONet
        if detector == YUNET:
            self.detect = DetectFacesYuNet(onnx_net(sessions[YUNET_ID]), settings.detector)
        elif detector == YUNET_ONET:
            yunet = DetectFacesYuNet(onnx_net(sessions[YUNET_ID]), settings.detector)
            self.detect = DetectFacesYuNetONet(yunet, ONetStage(onnx_net(sessions["mtcnn-onet"]), settings.detector))
        else:
            self.detect = DetectFaces(
                onnx_net(sessions["mtcnn-pnet"]),
                onnx_net(sessions["mtcnn-rnet"]),
                onnx_net(sessions["mtcnn-onet"]),
                settings.detector,
            )
        # Quality is measured on dlib's 150 px layout whatever the model (its bars were measured there).
        self.align_quality = AlignFaces(DLIB_ALIGNER)
        # Each embedding model with its own chip layout: the primary, then a fused recipe's second.
        self.embedders: list[tuple[EmbedFaces, AlignFaces]] = []
        for each in recipe.model_ids:
            embedding, session = embedding_of(each), sessions[each]
            align = self.align_quality if embedding.aligner is DLIB_ALIGNER else AlignFaces(embedding.aligner)
            providers = session.get_providers()
            batch = embed_batch_size(settings.runtime.embed_batch_size, embedding.cpu_batch_size, providers)
            self.embedders.append((EmbedFaces(session, batch, embedding.dim), align))
        self.embed, self.align = self.embedders[0]
        self.times = StageTimes()

    def __call__(
        self,
        blobs: list[bytes],
        max_faces: int | None = None,
        quality_filter: QualityFilter = QualityFilter.NONE,
        embed: bool = True,
    ) -> list[ImageFaces | ImageError]:
        """`embed=False`: faces, boxes and quality only (detection has no use for the model's vectors)."""
        started = time.perf_counter()
        decoded = self.decode(blobs)
        self.times.add("decode", started)
        images = [d for d in decoded if not isinstance(d, ImageError)]
        found = iter(self.from_arrays(images, max_faces, quality_filter, embed))
        return [d if isinstance(d, ImageError) else next(found) for d in decoded]

    def from_arrays(
        self,
        images: list[np.ndarray],
        max_faces: int | None = None,
        quality_filter: QualityFilter = QualityFilter.NONE,
        embed: bool = True,
    ) -> list[ImageFaces]:
        started = time.perf_counter()
        detections = self.detect(images) if images else []
        started = self.times.add("detect", started)
        results: list[ImageFaces] = []
        kept_chips: list[list[np.ndarray]] = [[] for _ in self.embedders]
        kept_faces: list[Face] = []
        for image, found in zip(images, detections, strict=True):
            quality_chips = self.align_quality(image, found.landmarks)
            chips = self.chips_of(image, found.landmarks, quality_chips)
            order = np.argsort(-(found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1]))
            result = ImageFaces(width=image.shape[1], height=image.shape[0], faces=[], skipped=[])
            for i in order:
                quality = assess(found.boxes[i], found.landmarks[i], found.scores[i], quality_chips[i])
                face = Face(found.boxes[i], found.landmarks[i], float(found.scores[i]), quality)
                face.skip_reasons = reasons_to_skip(quality, quality_filter)
                if not face.skip_reasons and max_faces is not None and len(result.faces) >= max_faces:
                    face.skip_reasons = [SkipReason.EXCEEDS_MAX_FACES]
                if face.skip_reasons:
                    result.skipped.append(face)
                else:
                    result.faces.append(face)
                    kept_faces.append(face)
                    for kept, layout in zip(kept_chips, chips, strict=True):
                        kept.append(layout[i])
            results.append(result)
        started = self.times.add("align_quality", started)
        if kept_faces and embed:
            vectors = self.embed_chips([np.stack(kept) for kept in kept_chips])
            for face, vector in zip(kept_faces, vectors, strict=True):
                face.embedding = vector
        self.times.add("embed", started)
        return results

    def chips_of(
        self, image: np.ndarray, landmarks: np.ndarray, quality_chips: np.ndarray | None = None
    ) -> list[np.ndarray]:
        """The faces' chips in each embedding model's layout (the quality layout's reused where it is one)."""
        return [
            quality_chips if quality_chips is not None and align is self.align_quality else align(image, landmarks)
            for _, align in self.embedders
        ]

    def embed_chips(self, chips: list[np.ndarray]) -> np.ndarray:
        """Unit-length vectors of aligned chips, one array of chips per embedding model (`chips_of`). A mirroring
        recipe averages each chip's embedding with its mirror image's (one batch of both, so the runtime sees twice
        the chips rather than twice the calls); a fused recipe joins its models' unit vectors, each scaled by the
        square root of its weight, so that inner products are the fused similarity."""
        parts = []
        for (embed, _), layout, weight in zip(self.embedders, chips, self.recipe.weights, strict=True):
            if self.recipe.mirror:
                both = normalize(embed(np.concatenate([layout, layout[:, :, ::-1]])))
                vectors = normalize(both[: len(layout)] + both[len(layout) :])
            else:
                vectors = normalize(embed(layout))
            parts.append(vectors * np.float32(weight))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
