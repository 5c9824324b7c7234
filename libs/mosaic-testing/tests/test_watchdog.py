"""The teardown watchdog follows a task's awaits down to the one that waits."""

from __future__ import annotations

import asyncio

from mosaic.testing.watchdog import awaits


async def test_the_chain_ofawaits_is_followed_through_coroutines_and_async_generators():
    release = asyncio.Event()

    async def innermost() -> None:
        await release.wait()

    async def generator():
        await innermost()
        yield

    async def outer() -> None:
        async for _ in generator():
            pass

    task = asyncio.create_task(outer())
    await asyncio.sleep(0.01)
    names = [frame.f_code.co_name for frame in awaits(task.get_coro())]
    release.set()
    await task
    assert names[:3] == ["outer", "generator", "innermost"] and "wait" in names
