"""Publishing `identity.merged` and `identity.split` from the outbox, only once they hold.

A merge or split writes its outbox entry before its LWT, so a crash cannot lose the event;
an entry is published only when the profile row shows the change happened (the merged
profile's `merge_id` is the merge's, or no longer is for a split). An entry whose change
never happened (the attempt lost its lock or crashed) is dropped once its lease is long
over. The message id is the merge or split id, so JetStream drops a republished duplicate.
"""

from __future__ import annotations

import asyncio
import logging

from identity_service.resolver import now_ms
from identity_service.store import IdentityStore, OutboxEntry
from mosaic.platform import metrics, topics
from mosaic.platform.bus import Bus

log = logging.getLogger("identity.outbox")
TOPICS = {topics.IDENTITY_MERGED.name: topics.IDENTITY_MERGED, topics.IDENTITY_SPLIT.name: topics.IDENTITY_SPLIT}


class Outbox:
    def __init__(self, store: IdentityStore, bus: Bus, abandon_after: float = 60.0) -> None:
        self.store = store
        self.bus = bus
        self.abandon_after_ms = int(abandon_after * 1000)
        self._first_seen: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def drain(self) -> int:
        """Publish every entry whose change holds; returns how many were published."""
        async with self._lock:  # one drain at a time per process; others find it empty
            published = 0
            pending = await self.store.outbox_pending(500)
            # A merge before any split: both are keyed by the survivor (one partition, in order),
            # and a split is only meaningful to the profile service after its merge.
            pending.sort(key=lambda e: (e.topic != topics.IDENTITY_MERGED.name, e.message_id))
            for entry in pending:
                state = await self._state(entry)
                if state == "holds":
                    message_id = entry.message_id.split("/", 1)[0]
                    await self.bus.publish(TOPICS[entry.topic], entry.key, _payload(entry), message_id)
                    await self.store.outbox_done(entry.message_id)
                    if entry.topic == topics.IDENTITY_MERGED.name:
                        metrics.identity_merged()
                    published += 1
                elif state == "never":
                    first = self._first_seen.setdefault(entry.message_id, now_ms())
                    if now_ms() - first >= self.abandon_after_ms:
                        await self.store.outbox_done(entry.message_id)
                        self._first_seen.pop(entry.message_id, None)
            return published

    async def _state(self, entry: OutboxEntry) -> str:
        message = _payload(entry)
        if entry.topic == topics.IDENTITY_MERGED.name:
            merged = message.merged_profile_ids[0]
            row = (await self.store.profiles([merged])).get(merged)
            holds = row is not None and row.merge_id == message.merge_id
            record = await self.store.merge(message.merge_id)
            # A merge since split is still an event the profile service must see, in order.
            return "holds" if holds or (record is not None and record.HasField("split_at")) else "never"
        restored = message.restored_profile_ids[0]
        row = (await self.store.profiles([restored])).get(restored)
        return "holds" if row is not None and row.merge_id != message.merge_id else "never"

    async def run(self, stopping: asyncio.Event, interval: float = 2.0) -> None:
        """Drain on an interval, for entries left by a crash or another replica."""
        while not stopping.is_set():
            try:
                await self.drain()
            except Exception:  # noqa: BLE001 - logged; the next round tries again
                log.exception("outbox drain failed")
            try:
                await asyncio.wait_for(stopping.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass


def _payload(entry: OutboxEntry):
    return TOPICS[entry.topic].message.FromString(entry.payload)
