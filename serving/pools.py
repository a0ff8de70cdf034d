"""A thread pool that refuses work it cannot start soon: a flood of large probes gets 429, not a queue of minutes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from cluster.errors import Busy

T = TypeVar("T")


class BoundedPool:
    """`workers` threads and at most `queued` calls waiting for one; past that a call raises Busy at once.

    Four 40-megapixel probes once held a vector search 50.8 s behind them on an unbounded pool: with a bound the
    wait a caller can meet is a few probes' worth, and a client told to retry spreads the load instead.
    """

    def __init__(
        self,
        workers: int,
        queued: int,
        name: str,
        retry_after_s: float = 1.0,
        initializer: Callable[[], None] | None = None,
    ) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=initializer)
        self.limit = workers + queued
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        if self.in_flight >= self.limit:
            raise Busy(
                f"the server is busy with {self.in_flight} photos; retry after {self.retry_after_s:g} s",
                retry_after_s=self.retry_after_s,
            )
        self.in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, work, *args)
        finally:
            self.in_flight -= 1

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False)
