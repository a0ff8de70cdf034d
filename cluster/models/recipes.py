"""Recipes: what turns a photo into a collection's vectors, named and pinned per collection. A recipe names its
detector (whose landmarks align the chips), its embedding model, whether each chip is embedded with its mirror image
and the two averaged, and the precision its embedder (and YuNet) run in. Each recipe has its own calibration, so its
floor and every per-match rate are its own; a collection's faces never mix recipes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort

from cluster.errors import InvalidRequest, ModelMismatch
from cluster.models.registry import DLIB_ID, SFACE_ID, YUNET_ID, ModelSourceMissing, embedding_of
from cluster.pipeline.runtime import Precision, choose_providers, choose_runtime, openvino_capabilities

MTCNN, YUNET, YUNET_ONET = "mtcnn", "yunet", "yunet-onet"
# Each detector and the nets it runs. YuNet's own landmarks cost recall (FNMR at 1e-5 0.092 against MTCNN's 0.057
# on lfw-dev); with O-Net placing them on YuNet's faces it is 0.056 (README, "Recipes").
DETECTORS = {
    MTCNN: ("mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet"),
    YUNET: (YUNET_ID,),
    YUNET_ONET: (YUNET_ID, "mtcnn-onet"),  # YuNet's faces, O-Net's landmarks
}


class UnknownRecipe(InvalidRequest):
    code = "UNKNOWN_RECIPE"


@dataclass(frozen=True)
class Recipe:
    name: str
    detector: str
    model_id: str
    mirror: bool = False  # embed each chip and its mirror image, average the two (unit length again)
    # bf16: OpenVINO runs the embedder (and YuNet) in bfloat16 where the CPU computes in it, ONNX Runtime fp32
    # elsewhere (embeddings agree to a cosine of at least 0.9994 on lfw-dev chips; README, "Recipes").
    precision: Precision = "fp32"
    description: str = ""
    # Score fusion: a second embedding model whose similarity is fused with the first's as
    # w * s1 + (1 - w) * s2 (w = fusion_weight). A face's vector is the two unit vectors joined, scaled by
    # sqrt(w) and sqrt(1 - w): unit length, and its inner product with a probe's is exactly the fused score, so
    # every index, shard and search works on it unchanged (exact fusion: no shortlist to miss a mate).
    fused_with: str | None = None
    fusion_weight: float = 1.0

    @property
    def model_ids(self) -> tuple[str, ...]:
        """Its embedding models, the primary first."""
        return (self.model_id, self.fused_with) if self.fused_with else (self.model_id,)

    @property
    def weights(self) -> tuple[float, ...]:
        """What each model's unit vector is scaled by in the joined vector."""
        if self.fused_with is None:
            return (1.0,)
        return (math.sqrt(self.fusion_weight), math.sqrt(1.0 - self.fusion_weight))

    @property
    def match_similarity(self) -> float:
        """The best-accuracy threshold on lfw-dev: its model's, or for a fused recipe the fused one of its models'
        (what `eval lfw` reports accuracy at; searches use the calibrated floor)."""
        if self.fused_with is None:
            return embedding_of(self.model_id).match_similarity
        first, second = (embedding_of(m).match_similarity for m in self.model_ids)
        return self.fusion_weight * first + (1.0 - self.fusion_weight) * second

    @property
    def dim(self) -> int:
        return sum(embedding_of(model_id).dim for model_id in self.model_ids)

    def precision_of(self, net: str) -> Precision:
        """The precision a net of this recipe runs in: the recipe's for its embedders and YuNet (one pass over a
        fixed-layout batch; in bf16 its boxes move 0.2 px on lfw-dev), fp32 for MTCNN's nets (many small shapes)."""
        return self.precision if net in (*self.model_ids, YUNET_ID) else "fp32"

    @property
    def is_plain(self) -> bool:
        """MTCNN and the model in fp32, unmirrored, unfused: what every collection before recipes holds, calibrated
        by the model's own calibration file."""
        return self.detector == MTCNN and self.precision == "fp32" and not self.mirror and self.fused_with is None

    @property
    def calibration_name(self) -> str:
        """Its shipped calibration: `calibrations/<name>.json` (a plain recipe's is its model's)."""
        return self.model_id if self.is_plain else self.name

    def describe(self) -> dict[str, object]:
        return {
            "recipe": self.name,
            "detector": self.detector,
            "model_id": self.model_id,
            "mirror": self.mirror,
            "precision": self.precision,
            "fused_with": self.fused_with,
            "fusion_weight": self.fusion_weight if self.fused_with else None,
            "dim": self.dim,
            "description": self.description,
        }


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("mtcnn-sface", MTCNN, SFACE_ID, description="MTCNN landmarks, SFace in fp32: as before recipes"),
        Recipe("mtcnn-dlib", MTCNN, DLIB_ID, description="MTCNN landmarks, dlib's ResNet in fp32"),
        Recipe(
            "mtcnn-sface-bf16",
            MTCNN,
            SFACE_ID,
            precision="bf16",
            description="MTCNN landmarks, SFace in bfloat16 where the CPU has it (about 1.8x faster a chip)",
        ),
        Recipe(
            "mtcnn-sface-mirror",
            MTCNN,
            SFACE_ID,
            mirror=True,
            precision="bf16",
            description="MTCNN landmarks, SFace on each chip and its mirror image averaged, in bfloat16 where the "
            "CPU has it: fewer missed mates for twice the embedding",
        ),
        Recipe(
            "yunet-sface",
            YUNET,
            SFACE_ID,
            precision="bf16",
            description="YuNet landmarks (single shot, about twice MTCNN's speed), SFace in bfloat16 where the CPU "
            "has it",
        ),
        Recipe(
            "yunet-onet-sface",
            YUNET_ONET,
            SFACE_ID,
            precision="bf16",
            description="YuNet's faces with MTCNN O-Net's landmarks, SFace in bfloat16 where the CPU has it",
        ),
        Recipe(
            "yunet-onet-sface-mirror",
            YUNET_ONET,
            SFACE_ID,
            mirror=True,
            precision="bf16",
            description="YuNet's faces with O-Net's landmarks, SFace on each chip and its mirror image averaged, in "
            "bfloat16 where the CPU has it",
        ),
        Recipe(
            "yunet-onet-sface-dlib-mirror",
            YUNET_ONET,
            SFACE_ID,
            mirror=True,
            precision="bf16",
            fused_with=DLIB_ID,
            # `facegrid eval fusion --recipe yunet-onet-sface-mirror --second dlib-resnet-v1`: the fewest missed
            # mates at FMR 1e-5 on one half of lfw-dev's people (0.20-0.70 all within 0.002 of it), checked on the
            # other half: 0.0561 with SFace alone, 0.0472 fused.
            fusion_weight=0.45,
            description="YuNet's faces with O-Net's landmarks, SFace and dlib's ResNet each on the chip and its "
            "mirror image, their similarities fused (0.45 / 0.55), in bfloat16 where the CPU has it: the fewest "
            "missed mates, for about three times the embedding",
        ),
    )
}
# What new collections get, and one flag away (README, "Recipes", for the measurements behind both).
# The default is the fastest recipe whose FNMR at 1e-5 on lfw-dev is at most MTCNN + SFace fp32's (0.0573).
# The accurate one has the lowest FNMR at 1e-5 of all (0.0517).
ALIASES = {"default": "yunet-onet-sface", "accurate": "yunet-onet-sface-dlib-mirror"}
DEFAULT_RECIPE = ALIASES["default"]


def recipe(name: str) -> Recipe:
    """A recipe by name or alias; a clear error naming those this build has."""
    found = RECIPES.get(ALIASES.get(name, name))
    if found is None:
        known = ", ".join([*RECIPES, *ALIASES])
        raise UnknownRecipe(f"unknown recipe {name!r}; this build has {known}")
    return found


def plain_recipe(model_id: str) -> Recipe:
    """The recipe a collection made before recipes was indexed with: MTCNN's landmarks, its model in fp32."""
    embedding_of(model_id)  # refuses ids this build does not know
    return next(r for r in RECIPES.values() if r.model_id == model_id and r.is_plain)


def offered(calibration: Callable[[str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Every recipe as `facegrid models list` shows it: what it is, its aliases, what runs its embedder on this
    machine, and its measured FNMR at each false match rate (from its shipped calibration; None where it has none)."""
    providers = choose_providers(ort.get_available_providers())
    rows = []
    for each in RECIPES.values():
        try:
            fnmr = calibration(each.calibration_name).get("fnmr_at_fmr")
        except ModelSourceMissing:
            fnmr = None
        runtime = choose_runtime(each.precision, providers, openvino_capabilities())
        rows.append(
            {
                **each.describe(),
                "aliases": [alias for alias, name in ALIASES.items() if name == each.name],
                "runs_here_on": f"{runtime} ({'bf16' if runtime == 'openvino' else 'fp32'})",
                "fnmr_at_fmr": fnmr,
            }
        )
    return rows


def recipe_of(name: str | None, model_id: str) -> Recipe:
    """A collection's recipe from what its manifest records: its recipe's name, or (made before recipes, None)
    its model's plain one."""
    return recipe(name) if name else plain_recipe(model_id)


def resolve(name: str | None, model_id: str | None) -> Recipe:
    """The recipe for a new collection from what was asked: a recipe, a model (its plain recipe), both (they must
    agree), or neither (the default)."""
    if name is None:
        return plain_recipe(model_id) if model_id is not None else recipe(DEFAULT_RECIPE)
    chosen = recipe(name)
    if model_id is not None and model_id != chosen.model_id:
        raise ModelMismatch(f"recipe {chosen.name} embeds with {chosen.model_id}, not {model_id}: name one of them")
    return chosen
