"""Stopping an in-process service in a test's teardown, bounded, with the evidence of a hang.

A graceful stop that never returns is a bug of the service, and the worst kind to find: the
teardown just sits in the event loop. Past the bound, this fails with the stack of every asyncio
task still alive, which names the await that never resolved.
"""

from __future__ import annotations

import asyncio

from mosaic.platform.server import Service
from mosaic.testing.watchdog import awaits


async def stop_within(service: Service, seconds: float = 30.0) -> None:
    task = asyncio.ensure_future(service.stop())
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        task.result()
        return
    stacks = [
        f"{alive.get_name()}: "
        + " > ".join(f"{f.f_code.co_name} ({f.f_code.co_filename}:{f.f_lineno})" for f in awaits(alive))
        for alive in asyncio.all_tasks()
        if alive is not asyncio.current_task()
    ]
    task.cancel()
    raise AssertionError(
        f"{service.settings.service} did not stop within {seconds} s; tasks alive:\n" + "\n".join(stacks)
    )
