"""The main job on the embedded default: build models, index a folder of photos, search with held-out photos."""

from __future__ import annotations

import os
from pathlib import Path

from cluster.keys.access import Caller
from serving.schemas import SearchAnswer
from serving.usecases import search
from serving.usecases.context import Context
from serving.usecases.policy import SearchRequest

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def hold_out_probes(images: Path, count: int) -> list[Path]:
    """The first photo of each of the first `count` sub-folders with at least three photos."""
    probes = []
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(photos) >= 3:
            probes.append(photos[0])
            if len(probes) == count:
                break
    return probes


def stage_source(images: Path, probes: list[Path], staging: Path) -> Path:
    """A folder of links to every photo but the probes, so that a probe is never its own match."""
    held = {p.resolve() for p in probes}
    for path in sorted(images.rglob("*")):
        if path.is_file() and path.resolve() not in held:
            link = staging / path.relative_to(images)
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(path.resolve(), link)
    return staging


async def search_probes(ctx: Context, caller: Caller, collection: str, probes: list[Path]) -> list[SearchAnswer]:
    request = SearchRequest("system-test", "DEMO", max_results=5)
    return [await search.search(ctx, caller, collection, p.read_bytes(), request) for p in probes]
