"""How much work is queued in the mesh: JetStream's pending counts per consuming service.

The demo waits for its events to flow through; on a mesh that is still draining an earlier
load, that can take minutes. It shows what it waits for and how much is queued ahead of it, and
gives up only when the queue stops shrinking, never because a fixed timeout passed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import nats
from nats.js.errors import NotFoundError

from mosaic.platform import topics

T = TypeVar("T")

# The stages in pipeline order, and the stream each one consumes.
STAGES = (
    ("identity", topics.EVENTS_RAW),
    ("profile", topics.EVENTS_RESOLVED),
    ("segmentation", topics.PROFILE_UPDATED),
    ("delivery", topics.SEGMENT_MEMBERSHIP),
)


class DemoStalled(RuntimeError):
    """The mesh made no progress towards what the demo waits for."""


async def queued(nats_url: str) -> dict[str, int]:
    """Messages not yet acknowledged, per consuming service (pending + in flight)."""
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        counts: dict[str, int] = {}
        for service, topic in STAGES:
            try:
                consumers = await js.consumers_info(topic.stream)
            except NotFoundError:
                consumers = []
            counts[service] = sum(
                (c.num_pending or 0) + (c.num_ack_pending or 0)
                for c in consumers
                if (c.name or "").startswith(f"{service}-")
            )
        return counts
    finally:
        await nc.close()


class Waiter:
    """Polls a check until it answers, printing a progress line while it waits."""

    def __init__(self, nats_url: str, stall_seconds: float = 120.0, out=sys.stderr) -> None:
        self.nats_url = nats_url
        self.stall_seconds = stall_seconds
        self.out = out

    async def until(self, what: str, check: Callable[[], Awaitable[T]]) -> T:
        started = last_progress = time.monotonic()
        lowest: int | None = None
        shown = False
        while True:
            try:
                value = await check()
                if value:
                    if shown:
                        self.out.write("\n")
                    return value
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            now = time.monotonic()
            if now - started >= 2 and int(now * 2) % 2 == 0:  # a line every second, after 2 s
                try:
                    ahead = await queued(self.nats_url)
                except Exception as error:  # NATS down: say so, keep waiting for the check
                    ahead, note = {}, f" (backlog unknown: {error})"
                else:
                    note = ""
                total = sum(ahead.values())
                if lowest is None or total < lowest:
                    lowest, last_progress = total, now
                detail = ", ".join(f"{name} {count:,}" for name, count in ahead.items())
                self.out.write(f"\r  waiting {now - started:4.0f} s for {what}; queued ahead: {detail}{note}   ")
                self.out.flush()
                shown = True
                if now - last_progress > self.stall_seconds:
                    self.out.write("\n")
                    raise DemoStalled(
                        f"{what}: nothing moved for {self.stall_seconds:.0f} s (queued ahead: {detail or 'unknown'})"
                    )
            await asyncio.sleep(0.25)
