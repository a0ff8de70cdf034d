"""Group commit: callers add one item each and wait; while one group is being committed, the items that arrive
wait and go out together in the next. One commit's cost (an object write, a Ray call) is paid per group."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class GroupCommit(Generic[In, Out]):
    """`commit` takes a group in order and returns one result per item, or raises (then every item of the group
    fails: nothing of it is acknowledged). Bound to the event loop it is first used on."""

    def __init__(self, commit: Callable[[list[In]], Awaitable[list[Out]]], max_group: int) -> None:
        self.commit = commit
        self.max_group = max_group
        self.waiting: list[tuple[In, asyncio.Future[Out]]] = []
        self.committing: asyncio.Task[None] | None = None

    async def add(self, item: In) -> Out:
        done: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, done))
        if self.committing is None:
            self.committing = asyncio.create_task(self._run())
        return await done

    async def _run(self) -> None:
        try:
            while self.waiting:
                group, self.waiting = self.waiting[: self.max_group], self.waiting[self.max_group :]
                try:
                    results = await self.commit([item for item, _ in group])
                except BaseException as exc:
                    # A cancelled commit fails its group too: a caller left waiting would wait for ever.
                    failed = exc if isinstance(exc, Exception) else RuntimeError(f"the commit ended: {exc!r}")
                    _fail(group, failed)
                    if not isinstance(exc, Exception):
                        _fail(self.waiting, failed)
                        self.waiting = []
                        raise
                    continue
                for (_, done), result in zip(group, results, strict=True):
                    # A caller that went away (its request cancelled) is skipped; its item was committed all the
                    # same, and the rest of the group still gets answers.
                    if not done.done():
                        done.set_result(result)
        finally:
            self.committing = None


def _fail(group: list[tuple[In, asyncio.Future[Out]]], exc: Exception) -> None:
    for _, done in group:
        if not done.done():
            done.set_exception(exc)
