"""Time passing: per-profile due times, kept durably, that re-evaluate the clock-dependent segments.

After every decision for a profile, the earliest time any clock-dependent segment could change
its answer with no new event (evaluate.next_due: a trait compared with `now - 14d` when the
trait's time is passed, an event window at the next UTC midnight) is stored as a timer in its
bucket. Every `interval` seconds each replica fires, for the partitions it holds (each under
`Ownership.working`, so a partition is not handed over mid-round), the buckets whose start has
passed since its cursor: the profile is decided again (its transitions
published like any other) and its next timer stored. A timer fires between its due time and one
bucket plus one interval after it; a restart goes on from the stored cursor.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from mosaic.platform.ownership import HeldPartitions
from segmentation_service.catalog import Live, SegmentCatalog
from segmentation_service.state import ProfileState
from segmentation_service.store import SegmentStore

if TYPE_CHECKING:
    from segmentation_service.membership import Memberships

log = logging.getLogger("segmentation.timers")
TIMER_BUCKET = 30  # seconds


def timed(segments: dict[str, Live]) -> list[Live]:
    """The segments whose answer may change with time alone."""
    return [live for live in segments.values() if live.compiled.timed]


def bucket_of(due: float) -> int:
    """The first bucket starting at or after `due`."""
    return math.ceil(due / TIMER_BUCKET)


class Timers:
    def __init__(
        self, store: SegmentStore, catalog: SegmentCatalog, ownership: HeldPartitions, interval: float = 10.0
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.ownership = ownership  # an Ownership (or FixedPartitions): what this replica holds
        self.interval = interval
        self.memberships: Memberships | None = None  # set by Memberships, which calls schedule after its decisions

    async def timed(self) -> list[Live]:
        return timed(await self.catalog.all())

    async def schedule(self, state: ProfileState, now: float) -> None:
        assert self.memberships is not None  # Memberships schedules, once it set itself here
        bucket = self.bucket(state, now, await self.timed())
        if bucket is not None:
            await self.store.add_timer(self.memberships.partition(state.profile_id), bucket, state.profile_id)
            self.memberships.view.set_scheduled(state.profile_id, bucket)

    def bucket(self, state: ProfileState, now: float, timed: list[Live]) -> int | None:
        """The bucket of the profile's next timer, if it is not stored yet; no I/O (the caller
        stores it, then tells the view with `set_scheduled`)."""
        assert self.memberships is not None
        dues = [due for live in timed if (due := live.due(state, now)) is not None]
        if not dues:
            return None
        bucket = bucket_of(min(dues))
        # Stored already if the view remembers it (until a restart).
        return None if self.memberships.view.scheduled(state.profile_id) == bucket else bucket

    async def run(self) -> None:
        while True:
            try:
                await self.fire()
            except Exception:  # a store outage: the cursor did not move, so the next round retries
                log.exception("timer round failed")
            await asyncio.sleep(self.interval)

    async def fire(self) -> int:
        """Fire every bucket that started since the cursor; returns the transitions."""
        memberships = self.memberships
        assert memberships is not None  # started after Memberships set itself here
        current = math.floor(memberships.clock() / TIMER_BUCKET)
        changed = 0
        for partition in sorted(self.ownership.owned):
            async with self.ownership.working(partition) as held:
                if not held:
                    continue  # handed over since the round began
                cursor = await self.store.timer_cursor(partition)
                for bucket in range(current - 1 if cursor is None else cursor + 1, current + 1):
                    segments = memberships.deciding(await self.timed(), partition)
                    for profile_id in await self.store.timers(partition, bucket):
                        changed += await memberships.reevaluate(profile_id, segments, f"time:{bucket}")
                        await self.store.drop_timer(partition, bucket, profile_id)
                    await self.store.set_timer_cursor(partition, bucket)
        return changed
