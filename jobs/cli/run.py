"""Running an index or upgrade request here with a progress bar (the command's path and a submitted job's), or
submitting it to a cluster."""

from __future__ import annotations

import os
import time
from typing import Any

import typer
from pydantic import BaseModel

from jobs.cli.common import call, console, emit, fail, progress_bar, settings, user_errors


def run_index(request: Any, using: Any = None, submitted_by: str | None = None) -> dict[str, Any]:
    """The index use case as the local operator, with a progress bar (the CLI's and a submitted job's path; a
    job's audit record names who submitted it)."""
    from serving.usecases import indexing

    totals = {"images": 0, "faces": 0, "errors": 0}
    started = [0.0]
    with progress_bar() as bar:
        task = bar.add_task("indexing", total=None, extra="")

        def planned(count: int) -> None:
            started[0] = time.perf_counter()
            bar.update(task, total=count)

        def advance(result: Any) -> None:
            for key in totals:
                totals[key] += getattr(result, key)
            rate = totals["images"] / max(time.perf_counter() - started[0], 1e-9)
            extra = f"faces {totals['faces']}  errors {totals['errors']}  {rate:.1f} img/s"
            bar.update(task, advance=result.images, extra=extra)

        def index(ctx: Any, caller: Any) -> Any:
            if submitted_by is not None:
                caller = caller.model_copy(update={"client": f"ray-job submitted by {submitted_by}"})
            return indexing.index(ctx, caller, request, planned, advance)

        summary: dict[str, Any] = call(index, using)
    return summary


def run_upgrade(request: Any, using: Any = None, submitted_by: str | None = None) -> dict[str, Any]:
    """The upgrade use case as the local operator, with a progress bar of photos embedded."""
    from serving.usecases import versions

    with progress_bar() as bar:
        task = bar.add_task("upgrading", total=None, extra="")

        def advance(result: Any) -> None:
            bar.update(task, advance=len(result.photos), extra=f"faces {result.faces}  kept {result.kept}")

        def upgrade(ctx: Any, caller: Any) -> Any:
            if submitted_by is not None:
                caller = caller.model_copy(update={"client": f"ray-job submitted by {submitted_by}"})
            return versions.upgrade(ctx, caller, request, advance)

        summary: dict[str, Any] = call(upgrade, using)
    return summary


def submitted(kind: str, request: BaseModel, collection: str, wait: bool, as_json: bool) -> bool:
    """With a dashboard address (RAY_ADDRESS http://...): the request submitted as a Ray job of this kind, what
    became of it printed (exit status 1 unless it succeeded, when followed), and True; else False: run it here."""
    address = os.environ.get("RAY_ADDRESS", "")
    if not address.startswith("http"):
        return False
    from jobs.submit import submit_job

    try:
        result = submit_job(address, settings(), kind, request, collection, wait)
    except user_errors() as exc:
        raise fail(exc) from exc
    emit(result, as_json)
    if wait and result.get("status") != "SUCCEEDED":
        reason = f": {result['error']}" if result.get("error") else ""
        console.print(f"[red]error[/red]: job {result['submission_id']} ended {result.get('status')}{reason}")
        raise typer.Exit(1)
    return True
