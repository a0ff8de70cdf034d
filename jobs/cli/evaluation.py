"""facegrid eval: accuracy on a pairs file, a fused recipe's weight, open-set identification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cluster.collections.manifest import DEFAULT_MAX_FALSE_CANDIDATES
from jobs.cli.common import (
    JsonFlag,
    ModelOption,
    RecipeOption,
    console,
    emit,
    fail,
    progress_bar,
    settings,
    user_errors,
)

eval_app = typer.Typer(help="Measure accuracy.", no_args_is_help=True)


@eval_app.command("lfw")
def eval_lfw(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    pairs: Annotated[Path, typer.Option(exists=True, dir_okay=False)],
    limit: Annotated[int | None, typer.Option(help="First N same and first N different pairs.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for ROC/DET plots and lfw.json.")] = Path("out/eval"),
    save_calibration: Annotated[
        bool,
        typer.Option(
            help="Also write the measured calibration to a new file in --out; it changes no collection's floor until "
            "`facegrid collections calibrate` applies it."
        ),
    ] = False,
    model: ModelOption = None,
    recipe: RecipeOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Verification accuracy and FNMR at fixed FMR on an LFW-style pairs file. Moves no floor: collections keep
    the calibration pinned when they were created."""
    from cluster.models.faces import FacePipeline
    from cluster.models.recipes import resolve
    from cluster.models.registry import ModelRegistry
    from jobs.evaluate import evaluate_lfw, read_pairs

    registry = ModelRegistry(settings().model_dir)
    try:
        chosen = resolve(recipe, model)
        pipeline = FacePipeline(settings(), registry, recipe=chosen)
    except user_errors() as exc:
        raise fail(exc) from exc
    count = len({n for p in read_pairs(pairs, limit) for n in (p.a, p.b)})
    with progress_bar() as bar:
        task = bar.add_task("embedding", total=count, extra="")
        result = evaluate_lfw(pipeline, images, pairs, limit, out, lambda n: bar.advance(task, n))
    calibration = result.pop("calibration")
    if save_calibration:
        saved = save_new_calibration(out, chosen.model_id, {**chosen.describe(), **calibration}, images, pairs, limit)
        result["calibration_file"] = str(saved)
    emit(result, as_json)


@eval_app.command("fusion")
def eval_fusion(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    pairs: Annotated[Path, typer.Option(exists=True, dir_okay=False)],
    recipe: Annotated[
        str, typer.Option(help="The recipe whose model comes first (its detector, mirroring, precision).")
    ],
    second: Annotated[str, typer.Option(help="The embedding model fused with it.")],
    out: Annotated[Path, typer.Option(help="Folder for fusion.json.")] = Path("out/eval"),
    as_json: JsonFlag = False,
) -> None:
    """Fit a fused recipe's weight: both models' embeddings of the pairs' photos (the second with the first's
    detector, mirroring and precision), the weight with the fewest missed mates at FMR 1e-5 on one half of the
    people, checked on the other half beside each model alone."""
    from dataclasses import replace

    from cluster.errors import InvalidRequest
    from cluster.models.faces import FacePipeline
    from cluster.models.recipes import recipe as named
    from cluster.models.registry import ModelRegistry, embedding_of
    from jobs.evaluate import embed_central_faces, read_pairs
    from jobs.fusion import fit_fusion

    registry = ModelRegistry(settings().model_dir)
    try:
        base = named(recipe)
        embedding_of(second)
        if base.fused_with is not None:
            raise InvalidRequest(f"recipe {base.name} is fused already: name the recipe it fuses")
        other = replace(base, name=f"{base.name}+{second}", model_id=second)
        pipelines = [FacePipeline(settings(), registry, recipe=r) for r in (base, other)]
    except user_errors() as exc:
        raise fail(exc) from exc
    read = read_pairs(pairs, None)
    names = sorted({n for p in read for n in (p.a, p.b)})
    embeddings = []
    with progress_bar() as bar:
        for pipeline in pipelines:
            task = bar.add_task(pipeline.recipe.model_id, total=len(names), extra="")

            def advance(n: int, task: Any = task) -> None:
                bar.advance(task, n)

            embeddings.append(embed_central_faces(pipeline, images, names, advance))
    result = {"recipe": base.name, "second": second, **fit_fusion(embeddings[0], embeddings[1], read)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "fusion.json").write_text(json.dumps(result, indent=2))
    emit(result, as_json)


@eval_app.command("identify")
def eval_identify(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False, help="One folder per person.")],
    out: Annotated[Path, typer.Option(help="Folder for the FNIR/FPIR plot.")] = Path("out/eval"),
    promise: Annotated[
        float, typer.Option(help="The per-search promise to measure (default: a new collection's).")
    ] = DEFAULT_MAX_FALSE_CANDIDATES,
    model: ModelOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Open-set identification (1:N) through the product's own index job and search path: FNIR at FPIR 0.1, 0.01
    and 0.003, and at the per-search promise, with the strangers per non-mated search it let through."""
    from cluster.models.registry import DEFAULT_EMBEDDER
    from jobs.identify import evaluate_identification

    result = evaluate_identification(
        settings(), images, model or DEFAULT_EMBEDDER, out, promise, lambda line: console.print(f"[dim]{line}[/dim]")
    )
    emit(result, as_json)


def save_new_calibration(
    out: Path, model_id: str, calibration: dict[str, Any], images: Path, pairs: Path, limit: int | None
) -> Path:
    """A new file, never one that exists (least of all the one collections were created with)."""
    import secrets
    from datetime import UTC, datetime

    at = datetime.now(UTC)
    path = out / f"calibration-{model_id}-{at:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}.json"
    body = {
        "model_id": model_id,
        "created_at": at.isoformat(timespec="seconds"),
        "dataset": str(images),
        "pairs_file": str(pairs),
        "pairs_limit": limit,
        **calibration,
    }
    out.mkdir(parents=True, exist_ok=True)
    with path.open("x") as handle:
        json.dump(body, handle, indent=1)
    return path
