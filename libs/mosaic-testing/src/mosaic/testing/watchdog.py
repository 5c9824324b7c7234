"""A teardown that takes too long prints the asyncio tasks still alive in the test's loop.

pytest-timeout shows the threads' stacks, and a hung asyncio teardown shows only the loop
waiting in `select`: the await that never resolves is in a task's stack, not a thread's. After
`after` seconds this prints every task of the loop running on the main thread to stderr.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _main_loop() -> asyncio.AbstractEventLoop | None:
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, asyncio.AbstractEventLoop):
            return candidate
        frame = frame.f_back
    return None


def _dump(where: str) -> None:
    loop = _main_loop()
    out = sys.__stderr__ or sys.stderr  # __stderr__ is None without a console
    print(f"\n=== {where}: still running; asyncio tasks of the main thread's loop ===", file=out)
    if loop is None:
        print("(no event loop running on the main thread)", file=out)
        return
    for task in list(asyncio.all_tasks(loop)):
        print(f"--- {task.get_name()}", file=out)
        for frame in awaits(task.get_coro()):
            print(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}", file=out)
    out.flush()


def awaits(awaitable: Any) -> Iterator[Any]:
    """The frames of a suspended coroutine and of everything it awaits, outermost first (a
    task's own stack stops at its first frame; this follows the chain down to the wait)."""
    seen = 0
    while awaitable is not None and seen < 100:
        seen += 1
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
        frame = frame or getattr(awaitable, "gi_frame", None)
        if frame is not None:
            yield frame
        following = getattr(awaitable, "cr_await", None) or getattr(awaitable, "ag_await", None)
        following = following or getattr(awaitable, "gi_yieldfrom", None)
        if following is None and type(awaitable).__name__ in ("async_generator_asend", "async_generator_athrow"):
            following = next((r for r in gc.get_referents(awaitable) if inspect.isasyncgen(r)), None)
        if following is None and isinstance(awaitable, asyncio.Task):
            following = awaitable.get_coro()
        awaitable = following


@contextmanager
def watching(where: str, after: float) -> Iterator[None]:
    timer = threading.Timer(after, _dump, args=(where,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
