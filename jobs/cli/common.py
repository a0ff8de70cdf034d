"""What every facegrid command shares: settings, output, progress, and turning user errors into messages."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cluster.settings import Settings, get_settings

if TYPE_CHECKING:
    from cluster.keys.access import Caller
    from serving.usecases.context import Context

console = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def _known_model(model_id: str | None) -> str | None:
    """Unknown model ids stop at the command line, with the list of known ones."""
    from cluster.models.registry import UnknownModel, embedding_of

    if model_id is not None:
        try:
            embedding_of(model_id)
        except UnknownModel as exc:
            raise typer.BadParameter(exc.message) from exc
    return model_id


ModelOption = Annotated[
    str | None,
    typer.Option("--model", help="Embedding model: sface-2021dec (default) or dlib-resnet-v1.", callback=_known_model),
]


def _known_recipe(name: str | None) -> str | None:
    """Unknown recipes stop at the command line, with the list of known ones."""
    from cluster.models.recipes import UnknownRecipe, recipe

    if name is not None:
        try:
            recipe(name)
        except UnknownRecipe as exc:
            raise typer.BadParameter(exc.message) from exc
    return name


RecipeOption = Annotated[
    str | None,
    typer.Option(
        "--recipe",
        help="Detector, model(s), mirroring and precision by name (`facegrid models list`); default and accurate name "
        "the default and the most accurate. Without it: --model's plain recipe, else the default.",
        callback=_known_recipe,
    ),
]


def settings() -> Settings:
    return get_settings()


def emit(result: dict[str, Any] | BaseModel, as_json: bool) -> None:
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    if as_json:
        print(json.dumps(result, default=str))
        return
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
    )


def user_errors() -> tuple[type[Exception], ...]:
    from cluster.errors import FacegridError
    from cluster.pipeline.errors import ImageError
    from cluster.storage import StorageError

    return (FacegridError, ImageError, StorageError)


def fail(exc: Exception) -> typer.Exit:
    """A user's error as one line with its stable code (the API's envelope, on a terminal); exit status 2."""
    from serving.usecases.failures import failure

    described = failure(exc)
    console.print(f"[red]error[/red] {described.code}: {described.message}")
    return typer.Exit(2)


def call(action: Callable[[Context, Caller], Any], using: Settings | None = None) -> Any:
    """Run a use case as the local operator (with these settings, else the environment's); user errors become a
    message and exit status 2."""
    from cluster.keys.access import local_operator
    from serving.usecases.context import Context

    context = Context(using or settings())
    try:
        result = action(context, local_operator())
        return asyncio.run(result) if inspect.iscoroutine(result) else result
    except user_errors() as exc:
        raise fail(exc) from exc
    finally:
        context.close()


def shard_count(value: str) -> int | str:
    """--shards: a count, or auto (resolved where the cluster is known)."""
    if value == "auto":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise typer.BadParameter(f"{value!r}: a shard count (1 or more) or auto", param_hint="--shards")
