"""facegrid bench: the benchmark commands, each printing the figures README quotes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from jobs.cli.common import JsonFlag, ModelOption, RecipeOption, console, emit, settings, shard_count

bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)


@bench_app.command("embed")
def bench_embed(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)] = Path("../shared/lfw-dev/images"),
    limit: int = 500,
    model: ModelOption = None,
    recipe: RecipeOption = None,
    as_json: JsonFlag = False,
) -> None:
    """A recipe (default: --model's plain one) against dlib's own pipeline and today's MTCNN + SFace, per core, on
    the same images: photos/s, ms a photo by stage, embedding by batch size."""
    from cluster.models.recipes import resolve
    from jobs.bench.embed import run_embed_benchmark

    emit(run_embed_benchmark(settings(), images, limit, console, resolve(recipe, model)), as_json)


@bench_app.command("threads")
def bench_threads(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)] = Path("../shared/lfw-dev/images"),
    recipe: RecipeOption = None,
    as_json: JsonFlag = False,
) -> None:
    """A recipe's embedder on the cores: one process with one thread, one with two, two processes of one thread
    each (an index job's layout), at batch 8 and 32, in chips a second."""
    from cluster.models.recipes import resolve
    from jobs.bench.threads import run_threads_benchmark

    emit(run_threads_benchmark(settings(), images, resolve(recipe, None)), as_json)


@bench_app.command("search")
def bench_search(
    faces: int = 100_000,
    shards: Annotated[str, typer.Option(help="Shard count, or auto: a shard a node, more past 5M faces a node.")] = "4",
    index: Annotated[str, typer.Option(help="Per-shard spec: auto, Flat, HNSW<M>, IVF<n>,SQ8, IVF<n>,PQ<m>")] = "auto",
    clients: Annotated[int, typer.Option(help="Concurrent clients for the throughput figure.")] = 16,
    queries: Annotated[int, typer.Option(help="Probes, each a held-out sample of an indexed identity.")] = 500,
    images: Annotated[
        Path, typer.Option(exists=True, file_okay=False, help="Photos (a folder per person) to fit the vectors to.")
    ] = Path("../shared/lfw-dev/images"),
    compare_accountability: Annotated[
        bool, typer.Option(help="Also time a server without auth and audit, query by query.")
    ] = False,
    nprobe: Annotated[int | None, typer.Option(help="IVF lists per search (default: a quarter).")] = None,
    ef_search: Annotated[int | None, typer.Option(help="HNSW breadth per search (default: 128).")] = None,
    store_dir: Annotated[Path | None, typer.Option(help="Where the temporary collection goes.")] = None,
    model: ModelOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Searches over synthetic faces fitted to our embeddings of real photos, through the HTTP API and the shards,
    against one in-process exact IndexFlatIP: latency, throughput, mate recall, memory, build time."""
    import numpy

    from cluster.models.registry import DEFAULT_EMBEDDER
    from jobs.bench.search import run_search_benchmark
    from jobs.bench.synthetic import fitted_statistics

    local = settings()
    model_id = model or DEFAULT_EMBEDDER
    statistics = fitted_statistics(local, images, model_id)
    result = run_search_benchmark(
        local,
        faces,
        shard_count(shards),
        queries,
        store_dir,
        statistics,
        index=index,
        clients=clients,
        compare_accountability=compare_accountability,
        knobs={k: v for k, v in (("nprobe", nprobe), ("ef_search", ef_search)) if v is not None},
        progress=lambda line: console.print(f"[dim]{line}[/dim]"),
        model_id=model_id,
    )
    emit({"model_id": model_id} | result | statistics.check(numpy.random.default_rng(1)), as_json)


@bench_app.command("recipes")
def bench_recipes(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)] = Path("../shared/lfw-dev/images"),
    faces: Annotated[
        int, typer.Option(help="Faces in the one shard measured (a 1M collection's shard: 250k).")
    ] = 250_000,
    spec: Annotated[
        list[str] | None, typer.Option(help="SPEC:LISTS,LISTS... (default: auto with the model's codes, and SQ8)")
    ] = None,
    model: ModelOption = None,
    as_json: JsonFlag = False,
) -> None:
    """One shard's index specs side by side (single-query p50 on one thread, mate recall@10 after the exact
    re-rank) over vectors fitted to the model's embeddings, and the cost of a Ray actor call here."""
    from cluster.models.registry import DEFAULT_EMBEDDER, embedding_of
    from jobs.bench.recipes import default_specs, ray_calls, recipes
    from jobs.bench.synthetic import fitted_statistics

    model_id = model or DEFAULT_EMBEDDER
    statistics = fitted_statistics(settings(), images, model_id)
    asked = [(s.split(":")[0], [int(n) for n in s.split(":")[1].split(",")]) for s in spec or []]
    chosen = asked or default_specs(faces, embedding_of(model_id).ivf_codes)
    emit({"model_id": model_id, "faces": faces, "recipes": recipes(statistics, faces, chosen), **ray_calls()}, as_json)


@bench_app.command("stores")
def bench_stores(
    faces: int = 20_000,
    shards: int = 4,
    clients: Annotated[int, typer.Option(help="Concurrent searching clients.")] = 16,
    as_json: JsonFlag = False,
) -> None:
    """The same searches with auth and audit on a local folder and on a real S3 server (rclone on 127.0.0.1):
    qps side by side (the audit's group commit on object stores)."""
    from jobs.bench.load import run_store_benchmark

    say = lambda line: console.print(f"[dim]{line}[/dim]")  # noqa: E731
    emit(run_store_benchmark(settings(), faces, shards, clients, say), as_json)


@bench_app.command("transparency")
def bench_transparency(
    records: Annotated[int, typer.Option(help="Audit records in the log before the run.")] = 7444,
    clients: Annotated[int, typer.Option(help="Anonymous clients asking for the report as fast as they can.")] = 8,
    searches: int = 300,
    as_json: JsonFlag = False,
) -> None:
    """One searcher's p50 idle and while clients hammer GET /v1/transparency, with the public rate limit on and
    off."""
    from jobs.bench.load import run_transparency_benchmark

    say = lambda line: console.print(f"[dim]{line}[/dim]")  # noqa: E731
    emit(run_transparency_benchmark(settings(), records, clients, searches, say), as_json)


@bench_app.command("ingest")
def bench_ingest(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)] = Path("../shared/lfw-dev/images"),
    photos: Annotated[int, typer.Option(help="Photos sent, one request each.")] = 600,
    clients: Annotated[int, typer.Option(help="Concurrent ingest clients.")] = 4,
    search: Annotated[bool, typer.Option(help="A search client alongside the ingest clients.")] = True,
    model: ModelOption = None,
    as_json: JsonFlag = False,
) -> None:
    """IndexFaces over HTTP, one photo a request from C clients, with a search client alongside."""
    from cluster.models.registry import DEFAULT_EMBEDDER
    from jobs.bench.ingest import run_ingest_benchmark

    progress = lambda line: console.print(f"[dim]{line}[/dim]")  # noqa: E731
    emit(
        run_ingest_benchmark(settings(), images, photos, clients, model or DEFAULT_EMBEDDER, progress, search), as_json
    )


@bench_app.command("people")
def bench_people(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)] = Path("../shared/lfw-dev/images"),
    min_photos: Annotated[int, typer.Option(help="Probe every person with at least this many photos.")] = 4,
    as_json: JsonFlag = False,
) -> None:
    """Rank-1 identification at the default floor: one photo against the person's other photos as separate
    faces, and against the same photos associated as a user (index, searches and users on a scratch store)."""
    from jobs.bench.people import run_people_benchmark

    emit(run_people_benchmark(settings(), images, min_photos, console), as_json)


@bench_app.command("index")
def bench_index(
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    limit: Annotated[int | None, typer.Option(help="Index only the first N photos (sorted).")] = None,
    model: ModelOption = None,
    recipe: RecipeOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Index a folder into a temporary store on the embedded Ray; images/s, faces/s and time per stage. A recipe
    other than today's (MTCNN + SFace in fp32) is indexed beside it in the same run, and the speed-up given."""
    from cluster.models.recipes import plain_recipe, resolve
    from cluster.models.registry import DEFAULT_EMBEDDER

    chosen, today = resolve(recipe, model), plain_recipe(DEFAULT_EMBEDDER)
    summary = _index_once(images, limit, chosen.name)
    if chosen != today:
        summary["baseline"] = _index_once(images, limit, today.name)
        summary["speedup"] = round(summary["images_per_s"] / summary["baseline"]["images_per_s"], 2)
    emit(summary, as_json)


def _index_once(images: Path, limit: int | None, recipe: str) -> dict[str, Any]:
    import asyncio
    import os
    import shutil
    import tempfile

    from cluster.indexing.embedder import IndexRequest
    from cluster.keys.access import local_operator
    from cluster.pipeline.quality import QualityFilter
    from jobs.demo import stage_source
    from serving.usecases import indexing
    from serving.usecases.context import Context

    work = Path(tempfile.mkdtemp(prefix="facegrid-bench-index-"))
    try:
        source = images
        if limit is not None:
            everything = sorted(p for p in images.rglob("*") if p.is_file())
            source = stage_source(images, everything[limit:], work / "source")
        local = Context(settings().model_copy(update={"store": str(work / "store")}))
        asked = {"collection": "bench", "source": str(source), "quality_filter": QualityFilter.NONE, "recipe": recipe}
        request = IndexRequest.model_validate(asked)
        console.print(f"indexing with {recipe}")
        summary: dict[str, Any] = asyncio.run(indexing.index(local, local_operator(), request))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    images_done = max(summary["images"], 1)
    summary["ms_per_image_by_stage"] = {
        k: round(1000 * v / images_done, 2) for k, v in summary["stage_seconds"].items()
    }
    cores = os.cpu_count() or 1
    return {"recipe": recipe, **summary, "images_per_s_per_core": round(summary["images_per_s"] / cores, 2)}


@bench_app.command("races")
def bench_races(
    ops: Annotated[
        int, typer.Option(help="Acts in all (adds, erasures, rebuilds, ...), in rounds of one to four.")
    ] = 500,
    seed: Annotated[int, typer.Option(help="The seed; a failure found replays its sequence of acts from it.")] = 1,
    store: Annotated[str, typer.Option(help="folder, or s3 (a local S3 server).")] = "folder",
    servers: int = 2,
    images: Annotated[Path, typer.Option(exists=True, file_okay=False)] = Path("../shared/lfw-dev/images"),
    as_json: JsonFlag = False,
) -> None:
    """Real servers on one store under seeded random interleavings, every answer checked against a model of the
    collection: the invariant violations found (none, on a sound build), with the seed."""
    from jobs.bench.races import run_races

    if store not in ("folder", "s3"):
        raise typer.BadParameter("store must be folder or s3")
    result = run_races(ops, seed, images, store, servers, progress=lambda line: console.print(f"[dim]{line}[/dim]"))
    emit(result, as_json)
    if result["violations"]:
        raise typer.Exit(1)
