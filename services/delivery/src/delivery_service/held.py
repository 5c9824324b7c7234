"""The sweeper: queues the jobs held for quiet hours once they fall due.

Each replica sweeps the partitions it holds (a held job is kept under its person's partition),
each under `Ownership.working`, so one sweeper at a time releases a job, even as partitions move. A release records the delivery QUEUED, then queues
the job (its message id is the delivery id, so a second release is a copy JetStream drops),
then forgets it: a crash in between releases it again. A held job whose delivery was decided
meanwhile (sent, or its person erased) is forgotten without a send, and one whose destination
was deleted is DISCARDED.
"""

from __future__ import annotations

import asyncio
import logging
import time

from delivery_service.destinations import DestinationCache
from delivery_service.jobs import JobQueue
from delivery_service.store import DeliveryStore
from delivery_service.worker import now, record
from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform import tasks
from mosaic.platform.bus import Bus
from mosaic.platform.ownership import HeldPartitions

log = logging.getLogger("mosaic.delivery.held")
Status = delivery_pb2.DeliveryStatus
PAGE = 500


class Sweeper:
    def __init__(
        self,
        store: DeliveryStore,
        cache: DestinationCache,
        queue: JobQueue,
        bus: Bus,
        ownership: HeldPartitions,
        interval: float,
    ) -> None:
        self.store = store
        self.cache = cache
        self.queue = queue
        self.bus = bus
        self.ownership = ownership  # an Ownership (or FixedPartitions): what this replica holds
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever())

    async def stop(self) -> None:
        await tasks.cancel(self._task)

    async def _forever(self) -> None:
        while True:
            try:
                await self.sweep(time.time())
            except Exception:  # noqa: BLE001 - the store or NATS is down: what is due waits
                log.warning("held jobs not swept", exc_info=True)
            await asyncio.sleep(self.interval)

    async def sweep(self, at: float) -> int:
        """Release every job due at `at` (epoch seconds); how many were released."""
        released = 0
        for slot in sorted(self.ownership.owned):
            async with self.ownership.working(slot) as held:
                while held:
                    jobs = await self.store.due_jobs(slot, at, PAGE)
                    for job in jobs:
                        released += await self._release(job, slot)
                    if len(jobs) < PAGE:
                        break
        return released

    async def _release(self, job: delivery_pb2.DeliveryJob, slot: int) -> int:
        held = await self.store.delivery(job.profile_id, job.delivery_id)
        waiting = (Status.DELIVERY_STATUS_SCHEDULED, Status.DELIVERY_STATUS_QUEUED)
        queued = held is not None and held.status in waiting
        if held is not None and queued:
            if not await self._exists(job.destination_id):
                held.status, held.detail = (
                    Status.DELIVERY_STATUS_DISCARDED,
                    "its destination was deleted while it was held",
                )
                held.updated_at.CopyFrom(now())
                await record(self.store, self.bus, [held], [])
                queued = False
            else:
                if held.status == Status.DELIVERY_STATUS_SCHEDULED:
                    held.status, held.detail = Status.DELIVERY_STATUS_QUEUED, "quiet hours over"
                    held.updated_at.CopyFrom(now())
                    await self.store.save_delivery(held)
                await self.queue.put(job)
        await self.store.unhold(job, slot)
        return int(queued)

    async def _exists(self, destination_id: str) -> bool:
        if self.cache.get(destination_id) is not None:
            return True
        return any(d.destination_id == destination_id for d in await self.store.destinations())
