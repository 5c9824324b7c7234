"""Stopping background tasks, for sure.

One `task.cancel()` is not always enough: a library that turns the CancelledError into its own
error (nats-py does, inside its requests; Python 3.11's `asyncio.wait_for` can lose one when its
inner future finishes at the same moment), caught by a loop's `except Exception`, leaves the task
running and whoever awaits it waiting for ever. That is how a service's graceful stop once hung.
`cancel` asks again every `every` seconds until each task is done.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("mosaic.tasks")


async def cancel(*tasks: asyncio.Task | asyncio.Future | None, every: float = 0.5) -> None:
    """Cancel the tasks and wait until every one is done; their outcome is discarded."""
    pending = {task for task in tasks if task is not None and not task.done()}
    asked = 0
    while pending:
        for t in pending:
            t.cancel()
        asked += 1
        if asked == 3:
            log.warning(
                "tasks still running after %d cancellations: %s",
                asked,
                [t.get_name() if isinstance(t, asyncio.Task) else t for t in pending],
            )
        _, pending = await asyncio.wait(pending, timeout=every)
    for task in tasks:
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved


async def woken_or_after(wake: asyncio.Event, seconds: float) -> None:
    """Wait until `wake` is set or `seconds` have passed, then clear it for the next wait: the
    pace of a loop that works a round at a time and can be asked for one sooner."""
    try:
        await asyncio.wait_for(wake.wait(), seconds)
    except TimeoutError:
        pass
    wake.clear()
