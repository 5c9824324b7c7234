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


# Everything that still moves after a load: the stages, consent's reading of events.resolved
# (consent choices ride on events) and delivery's per-destination job queues.
ALL_WORK = (*STAGES, ("consent", topics.EVENTS_RESOLVED), ("delivery-jobs", topics.DELIVERY_JOBS))


class DemoStalled(RuntimeError):
    """The mesh made no progress towards what the demo waits for."""


async def queued(nats_url: str, stages=STAGES, nc: nats.NATS | None = None) -> dict[str, int]:
    """Messages not yet acknowledged, per consuming service (pending + in flight) of `stages`;
    on `nc` when given (a poller's own connection), else on a connection of its own."""
    own = nc is None
    if nc is None:
        nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        counts: dict[str, int] = {}
        for service, topic in stages:
            try:
                consumers = await js.consumers_info(topic.stream)
            except NotFoundError:
                consumers = []
            counts[service] = counts.get(service, 0) + sum(
                (c.num_pending or 0) + (c.num_ack_pending or 0)
                for c in consumers
                if (c.name or "").startswith(f"{service}-")
            )
        return counts
    finally:
        if own:
            await nc.close()


class Waiter:
    """Polls a check until it answers, printing a progress line while it waits."""

    def __init__(self, nats_url: str, stall_seconds: float = 120.0, out=sys.stderr, poll: float = 0.25) -> None:
        self.nats_url = nats_url
        self.poll = poll
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
            await asyncio.sleep(self.poll)


class Idle:
    """Whether the mesh is idle: nothing queued anywhere (ALL_WORK), twice `settle` seconds
    apart, since a stage acks only after publishing what follows. One connection for all the
    polls of a wait (`async with`), so waiting costs the mesh little."""

    def __init__(self, nats_url: str, settle: float = 0.5) -> None:
        self.nats_url = nats_url
        self.settle = settle
        self._nc: nats.NATS | None = None

    async def __aenter__(self) -> Idle:
        self._nc = await nats.connect(self.nats_url, connect_timeout=5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._nc is not None:
            await self._nc.close()

    async def __call__(self) -> bool:
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(self.settle)
            if any((await queued(self.nats_url, ALL_WORK, self._nc)).values()):
                return False
        return True
