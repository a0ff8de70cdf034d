"""facegrid commands for a collection's model upgrade: build the shadow version, compare, switch, roll back
(registered on the `collections` and `jobs` commands of jobs/cli/admin.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from jobs.cli.admin import collections_app, jobs_app
from jobs.cli.common import JsonFlag, ModelOption, RecipeOption, call, emit


@collections_app.command("upgrade")
def collections_upgrade(
    name: str,
    model: ModelOption = None,
    detector: Annotated[str | None, typer.Option(help="The detector of the recipe to go to (mtcnn, yunet).")] = None,
    recipe: RecipeOption = None,
    missing: Annotated[
        str, typer.Option(help="Photos that cannot be read again: stop (the cut-over waits) or drop their faces.")
    ] = "stop",
    partition_size: Annotated[int, typer.Option(help="Photos per partition (the unit of resuming).")] = 32,
    wait: Annotated[bool, typer.Option(help="With a cluster address: follow the job's logs.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Embed every face of the collection again with another recipe, into a shadow version beside the live one
    (which serves throughout); face ids, users and associations kept. Resumable: run it again after a crash, or
    after adds, and it embeds only what is missing (submitted as a Ray job when --address is http://...). Then
    compare-versions, switch, rollback."""
    from cluster.indexing.upgrade import UpgradeRequest
    from jobs.cli.run import run_upgrade, submitted

    fields = {"model": model, "detector": detector, "recipe": recipe, "missing": missing}
    try:
        request = UpgradeRequest.model_validate({"collection": name, "partition_size": partition_size, **fields})
    except ValidationError as exc:
        raise typer.BadParameter(str(exc.errors()[0]["msg"])) from None
    if not submitted("upgrade", request, name, wait, as_json):
        emit(run_upgrade(request), as_json)


@collections_app.command("compare-versions")
def collections_compare_versions(
    name: str,
    sample: Annotated[int, typer.Option(help="Faces of the collection searched against both versions.")] = 200,
    probe: Annotated[
        list[Path] | None, typer.Option(exists=True, dir_okay=False, help="A probe photo (repeat)")
    ] = None,
    mates_by_folder: Annotated[
        bool, typer.Option(help="Faces whose external image ids share a folder are mates (LFW's layout): count them.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """The live version and the upgraded one, searched alike: top-10 overlap, faces gained and lost above each
    version's floor, and the floors; per probe with --json."""
    from serving.usecases import versions

    probes = [(str(p), p.read_bytes()) for p in probe or []]
    report = call(lambda s, c: versions.compare(s, c, name, sample, probes, mates_by_folder))
    emit(report if as_json else report["total"], as_json)


@collections_app.command("switch")
def collections_switch(
    name: str,
    keep_days: Annotated[float | None, typer.Option(help="Keep the version replaced this long (default 7).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Cut over to the upgraded version, atomically, while searches run; the version replaced is kept for rollback."""
    from serving.usecases import versions

    emit(call(lambda s, c: versions.cut_over(s, c, name, keep_days)), as_json)


@collections_app.command("rollback")
def collections_rollback(
    name: str,
    keep_days: Annotated[float | None, typer.Option(help="Keep the version left this long (default 7).")] = None,
    drop_added: Annotated[
        bool, typer.Option(help="Roll back even though photos were added since the cut-over (they leave searches).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Switch back to the version the last cut-over replaced (again: forward once more)."""
    from serving.usecases import versions

    emit(call(lambda s, c: versions.roll_back(s, c, name, keep_days, drop_added)), as_json)


@jobs_app.command("run-upgrade", hidden=True)
def jobs_run_upgrade(as_json: JsonFlag = False) -> None:
    """Inside a submitted job: run the upgrade request the submitter sent (see jobs/submit.py)."""
    from cluster.indexing.upgrade import UpgradeRequest
    from jobs.cli.run import run_upgrade
    from jobs.submit import received

    sent, request, submitter = received(UpgradeRequest)
    emit(run_upgrade(request, sent, submitted_by=submitter), as_json)
