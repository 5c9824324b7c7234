"""The relay of the outbox: what the store holds is published, then removed.

Writers call `kick()` after their durable write, so a change is announced at once; a loop
drains on an interval for what a crash, a NATS outage or another replica left behind. The
message id is fixed at write time, so a publish repeated after a crash is dropped by JetStream
within its window and is, beyond it, an idempotent notice (the payload says what changed).
"""

from __future__ import annotations

import asyncio
import logging

from consent_service.store import ConsentStore
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.errors import Unavailable

log = logging.getLogger("consent.outbox")
TOPICS = {t.name: t for t in topics.ALL}


class Relay:
    def __init__(self, store: ConsentStore, bus: Bus) -> None:
        self.store = store
        self.bus = bus
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self.published = 0

    def kick(self) -> None:
        """Ask for a drain soon (after a write)."""
        self._wake.set()

    async def drain(self) -> int:
        """Publish every pending entry; returns how many. Raises Unavailable if NATS or the store is down."""
        async with self._lock:
            count = 0
            while pending := await self.store.outbox_pending(500):
                for entry in pending:
                    topic = TOPICS[entry.topic]
                    await self.bus.publish_many(topic, [(entry.key, entry.payload, entry.message_id)])
                await self.store.outbox_done([e.message_id for e in pending])
                count += len(pending)
            self.published += count
            return count

    async def run(self, stopping: asyncio.Event, interval: float = 2.0) -> None:
        while not stopping.is_set():
            try:
                await self.drain()
            except Unavailable as error:
                log.warning("outbox not drained: %s", error)
            except Exception:  # noqa: BLE001 - logged; the next round tries again
                log.exception("outbox drain failed")
            self._wake.clear()
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stopping.wait())]
            await asyncio.wait(waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
