"""`tasks.cancel` stops a task even when its first cancellation is swallowed; `woken_or_after`
paces a loop."""

from __future__ import annotations

import asyncio

from mosaic.platform import tasks


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again_until_it_stops():
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed < 2:  # as a library that turns it into its own error, caught by a loop
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(tasks.cancel(task, every=0.05), 5)
    assert task.cancelled() and swallowed == 2


async def test_finished_failed_and_missing_tasks_are_fine():
    async def fails() -> None:
        raise ValueError("its own error, discarded")

    failed = asyncio.create_task(fails())
    await asyncio.sleep(0)
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await tasks.cancel(failed, done, None)
    assert failed.done() and done.done()


async def test_a_wait_woken_returns_at_once_and_leaves_the_event_clear_for_the_next():
    wake = asyncio.Event()
    wake.set()
    await asyncio.wait_for(tasks.woken_or_after(wake, 60), timeout=1)
    assert not wake.is_set()


async def test_a_wait_not_woken_returns_after_its_seconds():
    wake = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await tasks.woken_or_after(wake, 0.05)
    assert loop.time() - started >= 0.05
    assert not wake.is_set()


async def test_a_wait_is_woken_while_it_waits():
    wake = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, wake.set)
    await asyncio.wait_for(tasks.woken_or_after(wake, 60), timeout=1)
    assert not wake.is_set()
