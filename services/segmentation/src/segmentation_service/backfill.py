"""Backfills: a new or changed segment's membership computed over every profile.

Each replica backfills the partitions it holds, one partition at a time (under
`Ownership.working`, so a partition is not handed over mid-way), and records each partition done
for the segment's revision, so a restart, or the replica a partition moves to, resumes with the
partitions left.
The columnar view finds the candidates (profiles whose stored membership differs from what the
definition says now); each is decided again under its lock by the plain evaluator, which also
publishes the transition. A segment's revision grows with every change, so a changed
definition is backfilled again; so is a segment reading RFM scores when a recompute moves the
edges (its backfill revision carries the edges' generation).

A segment reading event series waits until the profile service has backfilled them and this
replica has their backfill in its view (`SeriesGate`); until its own backfill is done on a
partition, nothing else decides it there (`holds`), so no profile enters on a series that
is still missing its past and leaves when the past arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

import numpy as np

from mosaic.platform.errors import FailedPrecondition, Unavailable
from mosaic.platform.ownership import HeldPartitions
from mosaic.platform.tasks import woken_or_after
from segmentation_service.catalog import Live, SegmentCatalog
from segmentation_service.membership import Memberships
from segmentation_service.profiles import SeriesGate
from segmentation_service.store import SegmentStore

log = logging.getLogger("segmentation.backfill")
SCHEDULED_PER_WRITE = 1000  # timers written by one store call when a backfill renews them


class Backfiller:
    def __init__(
        self,
        store: SegmentStore,
        catalog: SegmentCatalog,
        memberships: Memberships,
        ownership: HeldPartitions,
        interval: float = 5.0,
        size_interval: float = 3600.0,
        gate: SeriesGate | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.memberships = memberships
        self.ownership = ownership  # an Ownership (or FixedPartitions): what this replica holds
        self.interval = interval
        self.size_interval = size_interval
        self._sized_at = -float("inf")
        self.gate = gate  # None without a profile service: nothing to wait for
        self._done: set[tuple[str, int, int]] = set()  # (segment, revision, partition) known done
        self._waiting: dict[str, dict[str, str]] = {}  # segment -> the series it waits for, and why
        self._wake = asyncio.Event()
        memberships.held = self.holds

    def holds(self, live: Live, partition: int) -> bool:
        """Whether a segment is decided only by its backfill on a partition: one reading event
        series is, until that backfill is done (it waits for the series'; `load` knows what is
        done on the partitions held before their consumers start)."""
        return bool(live.series) and (live.segment_id, live.backfill_revision, partition) not in self._done

    async def load(self, partitions: frozenset[int]) -> None:
        """What is done already on partitions taken over, for the segments reading event series."""
        for live in list((await self.catalog.all()).values()):
            if live.series:
                done = await self.store.backfilled(live.segment_id, live.backfill_revision)
                self._done.update((live.segment_id, live.backfill_revision, p) for p in partitions & done)

    async def _series_ready(self, live: Live) -> bool:
        if self.gate is None or not live.series:
            return True
        try:
            waiting = await self.gate.waiting(live.series, self.ownership.owned)
        except (Unavailable, FailedPrecondition) as error:
            # The profile service cannot say now: this segment waits, the others go on.
            waiting = {request.name: f"the profile service did not answer: {error}" for request in live.series}
        if waiting and waiting != self._waiting.get(live.segment_id):
            log.info(
                "segment waits for its event series' backfill",
                extra={"fields": {"segment": live.segment_id, "revision": live.tag, "series": waiting}},
            )
        if waiting:
            self._waiting[live.segment_id] = waiting
        else:
            self._waiting.pop(live.segment_id, None)
        return not waiting

    def wake(self) -> None:
        self.catalog.invalidate()
        self._wake.set()

    async def run(self) -> None:
        """For ever: backfill whatever segment revision is not done yet."""
        while True:
            try:
                await self.once()
                if time.monotonic() - self._sized_at >= self.size_interval:
                    await self.count_sizes()
                    self._sized_at = time.monotonic()
            except Exception:  # a store outage: try again at the next round
                log.exception("backfill round failed")
            await woken_or_after(self._wake, self.interval)

    async def once(self) -> int:
        """Backfill every pending (segment, revision, partition); returns the transitions."""
        changed = 0
        pending: dict[int, list[Live]] = {}  # partition -> the segments it is still to backfill
        for live in list((await self.catalog.all()).values()):
            revision = live.backfill_revision
            todo = [p for p in sorted(self.ownership.owned) if (live.segment_id, revision, p) not in self._done]
            if not todo or not await self._series_ready(live):
                continue
            done = await self.store.backfilled(live.segment_id, revision)
            for partition in todo:
                if partition in done:
                    self._done.add((live.segment_id, revision, partition))
                else:
                    pending.setdefault(partition, []).append(live)
        for partition, segments in sorted(pending.items()):
            async with self.ownership.working(partition) as held:
                if not held:
                    continue  # handed over meanwhile: its new holder backfills it
                for live in segments:
                    changed += await self._partition(live, partition)
                if any(live.compiled.timed for live in segments):
                    # Every profile may come due for a new definition, not only those it moved:
                    # once for all of them (new RFM edges renew every segment reading scores).
                    await self._schedule(partition)
                for live in segments:
                    await self.store.set_backfilled(live.segment_id, live.backfill_revision, partition)
                    self._done.add((live.segment_id, live.backfill_revision, partition))
                # A segment on event series was decided by its backfill alone until now: what
                # changed on the partition while it ran (an update skipped as held, after the
                # backfill had read the view) is decided by a second look, the updates from now
                # on by the live path.
                for live in segments:
                    if live.series:
                        changed += await self._partition(live, partition, again=True)
        return changed

    async def _partition(self, live: Live, partition: int, again: bool = False) -> int:
        await asyncio.sleep(0)  # a turn of the loop between evaluations of the whole view
        view = self.memberships.view
        now = self.memberships.clock()
        matching = set(view.profile_ids(view.evaluate(live.compiled.expression, now, partition)))
        members = {pid for pid, _ in await self.store.members(live.segment_id, partition)}
        changed = 0
        for profile_id in sorted(matching ^ members):
            changed += await self.memberships.reevaluate(profile_id, [live], f"backfill:{live.tag}")
            await asyncio.sleep(0)  # let live updates through between profiles
        if not again or changed:
            log.info(
                "backfilled" if not again else "backfilled: what came while it ran",
                extra={
                    "fields": {
                        "segment": live.segment_id,
                        "revision": live.tag,
                        "partition": partition,
                        "changed": changed,
                    }
                },
            )
        return changed

    async def _schedule(self, partition: int) -> None:
        """Every live profile's next timer on the partition, a chunk at a time: each chunk's
        due times worked out and written, then the loop let run. Working out a profile's is
        ~17 us, so a partition of a million-profile view is seconds of CPU: held at once, it
        starved the lease renewals until the leases lapsed (seen at 1,000,000 profiles)."""
        timers = self.memberships.timers
        if timers is None:
            return
        view, now = self.memberships.view, self.memberships.clock()
        timed = await timers.timed()
        n = len(view.ids)
        profile_ids = view.profile_ids((view.partition[:n] == partition) & view.alive[:n])
        for first in range(0, len(profile_ids), SCHEDULED_PER_WRITE):
            chunk: list[tuple[int, int, str]] = []
            for profile_id in profile_ids[first : first + SCHEDULED_PER_WRITE]:
                state = view.get(profile_id)
                if state is None or not view.is_alive(profile_id):
                    continue  # gone or merged while the loop ran: the live path decided it
                bucket = timers.bucket(state, now, timed)
                if bucket is not None:
                    chunk.append((partition, bucket, profile_id))
            if chunk:
                await self.store.record((), chunk)
            for _, bucket, profile_id in chunk:
                view.set_scheduled(profile_id, bucket)
            await asyncio.sleep(0)  # let live updates and renewals through between chunks

    async def count_sizes(self) -> None:
        """Every segment's size on the owned partitions today, as the view counts it (the
        stored members are the same once the changes in flight are decided): one evaluation a
        segment, counted by partition, and a turn of the loop after each (an evaluation of a
        million-profile view is up to tens of milliseconds, and there is one a segment)."""
        view = self.memberships.view
        now = self.memberships.clock()
        day = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d")
        for live in list((await self.catalog.all()).values()):
            mask = view.evaluate(live.compiled.expression, now)
            sizes = np.bincount(view.partition[: len(mask)][mask], minlength=view.partitions)
            for partition in sorted(self.ownership.owned):
                async with self.ownership.working(partition) as held:
                    if held:
                        await self.store.set_size(live.segment_id, day, partition, int(sizes[partition]))
            await asyncio.sleep(0)

    async def exit_all(self, segment_id: str, revision: int) -> int:
        """A deleted segment: every member exits (of every partition: the store is shared)."""
        changed = 0
        for partition in range(self.memberships.bus.partitions):
            for profile_id, _ in await self.store.members(segment_id, partition):
                changed += await self.memberships.leave(profile_id, segment_id, f"delete:{revision}")
        return changed
