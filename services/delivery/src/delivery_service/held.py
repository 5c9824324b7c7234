"""The sweeper: queues the jobs held for quiet hours once they fall due.

Each replica sweeps the partitions it owns (a held job is kept under its person's partition),
so one sweeper at a time releases a job. A release records the delivery QUEUED, then queues
the job (its message id is the delivery id, so a second release is a copy JetStream drops),
then forgets it: a crash in between releases it again. A held job whose delivery was decided
meanwhile (sent, or its person erased) is forgotten without a send.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from delivery_service.jobs import JobQueue
from delivery_service.store import DeliveryStore
from delivery_service.worker import now
from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform import tasks

log = logging.getLogger("mosaic.delivery.held")
Status = delivery_pb2.DeliveryStatus
PAGE = 500


class Sweeper:
    def __init__(self, store: DeliveryStore, queue: JobQueue, partitions: Sequence[int], interval: float) -> None:
        self.store = store
        self.queue = queue
        self.partitions = tuple(partitions)
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
        for slot in self.partitions:
            while True:
                jobs = await self.store.due_jobs(slot, at, PAGE)
                for job in jobs:
                    released += await self._release(job, slot)
                if len(jobs) < PAGE:
                    break
        return released

    async def _release(self, job: delivery_pb2.DeliveryJob, slot: int) -> int:
        record = await self.store.delivery(job.profile_id, job.delivery_id)
        waiting = (Status.DELIVERY_STATUS_SCHEDULED, Status.DELIVERY_STATUS_QUEUED)
        queued = record is not None and record.status in waiting
        if record is not None and queued:
            if record.status == Status.DELIVERY_STATUS_SCHEDULED:
                record.status = Status.DELIVERY_STATUS_QUEUED
                record.detail = "quiet hours over"
                record.updated_at.CopyFrom(now())
                await self.store.save_delivery(record)
            await self.queue.put(job)
        await self.store.unhold(job, slot)
        return int(queued)
