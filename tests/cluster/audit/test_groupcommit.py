"""Group commit: a caller that goes away, or a commit that is cancelled, never leaves the others waiting."""

from __future__ import annotations

import asyncio

import pytest

from cluster.audit.groupcommit import GroupCommit


async def _doubled(items: list[int]) -> list[int]:
    await asyncio.sleep(0.05)
    return [item * 2 for item in items]


def test_a_cancelled_caller_leaves_the_rest_of_its_group_answered() -> None:
    async def main() -> None:
        group = GroupCommit(_doubled, 64)
        first = asyncio.create_task(group.add(1))
        await asyncio.sleep(0.01)  # the first commit runs; the next two wait for the second group together
        gone, stays = asyncio.create_task(group.add(2)), asyncio.create_task(group.add(3))
        await asyncio.sleep(0.01)
        gone.cancel()
        assert await first == 2
        assert await asyncio.wait_for(stays, 2) == 6
        assert await asyncio.wait_for(group.add(4), 2) == 8

    asyncio.run(main())


def test_a_cancelled_commit_fails_every_waiting_caller() -> None:
    async def never(items: list[int]) -> list[int]:
        await asyncio.sleep(3600)
        return items

    async def main() -> None:
        group = GroupCommit(never, 1)
        callers = [asyncio.create_task(group.add(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        assert group.committing is not None
        group.committing.cancel()
        for caller in callers:
            with pytest.raises(RuntimeError, match="the commit ended"):
                await asyncio.wait_for(caller, 2)
        assert group.committing is None and not group.waiting

    asyncio.run(main())
