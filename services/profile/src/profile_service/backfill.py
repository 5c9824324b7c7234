"""Backfills of the stored definitions (computed traits, event series) from the event archive.

Each stored definition is backfilled once on every partition of the bus, by the replica that
owns the partition, which then records it done (`ProfileStore.set_backfilled`) with the stream
sequence of the last profile.updated that backfill published there. What has no record is
backfilled: a new definition, a partition taken over (its last owner may have been cut off
mid-way), everything after a restart. A reader (segmentation) learns from the records
(DefineEventSeries) when a series is whole and through which message to read for it.

Definitions stored before these records existed have none: each is backfilled once more after
the upgrade. That pass changes no profile already backfilled, but publishes each one's latest
profile.updated again (see `Profiles.backfill`), which readers skip as a version they have.

A round reads the catalog and, for what this replica has not seen recorded yet, the records;
then one scan of the profiles serves every pending (definition, partition). A partition is
worked on (`HeldPartitions.working`) only around each profile's step and its record, so a
handover waits for one profile, not for a scan; and a partition released during the pass, even
if taken back since, is not recorded: its next owner found no record and did its own pass.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from mosaic.platform.ownership import HeldPartitions
from mosaic.platform.tasks import woken_or_after
from mosaic.platform.topics import partition_of
from mosaic.profile.v1 import profile_pb2

if TYPE_CHECKING:
    from profile_service.profiles import Profiles

log = logging.getLogger("mosaic.profile.backfill")

# A definition as the records of this replica know it: deleted and defined again, it is another.
_Defined = tuple[str, int]  # (name, created_at in microseconds)


def _defined(definition: profile_pb2.ComputedTraitDefinition) -> _Defined:
    return definition.name, definition.created_at.ToMicroseconds()


class Backfiller:
    def __init__(self, profiles: Profiles, held: HeldPartitions, interval: float = 5.0) -> None:
        self.profiles = profiles
        self.store = profiles.store
        self.held = held  # an Ownership (or FixedPartitions): what this replica owns
        self.interval = interval
        self._recorded: set[tuple[_Defined, int]] = set()  # (definition, partition) known recorded
        self._passing: set[int] = set()  # the partitions of the pass under way, owned all along so far
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A new definition: a round now rather than at the next interval."""
        self._wake.set()

    async def acquired(self, partitions: frozenset[int]) -> None:
        """Partitions taken over (an ownership follower): backfilled where they have no record.
        Before their consumers start, the definitions are read again: a definition the last
        owner backfilled and recorded here may be newer than this replica's catalog, and an
        event folded without it would never be backfilled (the record says done)."""
        self.profiles.definitions.invalidate()
        self._wake.set()

    async def released(self, partitions: frozenset[int]) -> None:
        """Partitions handed over (an ownership follower): the pass under way records none of them."""
        self._passing -= partitions

    async def run(self) -> None:
        """For ever, a round at a time; a failed round (store, NATS) is tried again at the next."""
        while True:
            try:
                await self.once()
            except Exception:  # a store or NATS outage: the next round tries again
                log.exception("backfill round failed")
            await woken_or_after(self._wake, self.interval)

    async def once(self) -> None:
        """Backfill every stored definition on each owned partition without its record."""
        definitions = await self.profiles.definitions.stored()
        current = {_defined(d) for d in definitions}
        self._recorded = {done for done in self._recorded if done[0] in current}  # forget the deleted
        pending: dict[int, list[profile_pb2.ComputedTraitDefinition]] = {}  # partition -> its definitions
        for definition in definitions:
            defined = _defined(definition)
            todo = [p for p in sorted(self.held.owned) if (defined, p) not in self._recorded]
            if not todo:
                continue
            records = await self.store.backfills(definition)
            for partition in todo:
                if partition in records:
                    self._recorded.add((defined, partition))
                else:
                    pending.setdefault(partition, []).append(definition)
        if pending:
            await self._pass(pending)

    async def _pass(self, pending: dict[int, list[profile_pb2.ComputedTraitDefinition]]) -> None:
        """One scan of the profiles for every pending (definition, partition); then a record for
        each partition owned all along."""
        count = self.profiles.bus.partitions
        self._passing = set(pending)
        last = dict.fromkeys(pending, 0)  # partition -> the highest sequence published on it
        published = dict.fromkeys(pending, 0)
        async for scanned, _ in self.store.scan(keep=lambda pid: partition_of(pid, count) in self._passing):
            partition = partition_of(scanned.profile_id, count)
            async with self.held.working(partition) as owned:
                if not owned or partition not in self._passing:
                    self._passing.discard(partition)
                    continue
                sequence = await self.profiles.backfill(scanned.profile_id, pending[partition])
            last[partition] = max(last[partition], sequence)
            published[partition] += sequence > 0
            await asyncio.sleep(0)  # the embedded store never yields: let the events and renewals through
        for partition in sorted(self._passing):
            async with self.held.working(partition) as owned:
                if not owned or partition not in self._passing:
                    continue
                for definition in pending[partition]:
                    await self.store.set_backfilled(definition, partition, last[partition])
                    self._recorded.add((_defined(definition), partition))
            fields = {
                "names": [d.name for d in pending[partition]],
                "partition": partition,
                "profiles": published[partition],
                "sequence": last[partition],
            }
            log.info("backfilled", extra={"fields": fields})
