"""Running an index request here with a progress bar: the `index` command's path and a submitted job's."""

from __future__ import annotations

import time
from typing import Any

from jobs.cli.common import call, progress_bar


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
