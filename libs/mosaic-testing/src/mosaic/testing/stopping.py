"""Stopping an in-process service in a test's teardown, bounded, with the evidence of a hang.

A graceful stop that never returns is a bug of the service, and the worst kind to find: the
teardown just sits in the event loop. Past the bound, this fails with the stack of every asyncio
task still alive, which names the await that never resolved.
"""

from __future__ import annotations

import asyncio
import io

from mosaic.platform.server import Service


async def stop_within(service: Service, seconds: float = 30.0) -> None:
    task = asyncio.ensure_future(service.stop())
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        task.result()
        return
    stacks = io.StringIO()
    for alive in asyncio.all_tasks():
        if alive is not asyncio.current_task():
            alive.print_stack(file=stacks)
    task.cancel()
    raise AssertionError(
        f"{service.settings.service} did not stop within {seconds} s; tasks alive:\n{stacks.getvalue()}"
    )
