"""One worker pool per destination, started and stopped as destinations come and go."""

from __future__ import annotations

import asyncio

from delivery_service.consent import Answers
from delivery_service.jobs import JobQueue
from delivery_service.privacy import ErasedPeople
from delivery_service.store import DeliveryStore
from delivery_service.worker import DestinationWorker, WorkerSettings
from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform.bus import Bus


class Dispatcher:
    def __init__(
        self,
        queue: JobQueue,
        store: DeliveryStore,
        bus: Bus,
        settings: WorkerSettings,
        answers: Answers,
        erased: ErasedPeople | None = None,
    ) -> None:
        self.queue = queue
        self.erased = erased or ErasedPeople(store)  # looked at again before every send
        self.answers = answers  # read again before every send
        self.store = store
        self.bus = bus
        self.settings = settings
        self.workers: dict[str, DestinationWorker] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def update(self, destinations: dict[str, delivery_pb2.Destination]) -> None:
        """Match the workers to the destinations: a changed definition gets a fresh pool."""
        for destination_id, worker in list(self.workers.items()):
            if destinations.get(destination_id) != worker.destination:
                self._stop(self.workers.pop(destination_id))
        for destination_id, destination in destinations.items():
            if destination_id not in self.workers:
                worker = DestinationWorker(
                    destination, self.queue, self.store, self.bus, self.settings, self.answers, self.erased
                )
                worker.start()
                self.workers[destination_id] = worker

    def _stop(self, worker: DestinationWorker) -> None:
        task = asyncio.create_task(worker.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        for worker in self.workers.values():
            self._stop(worker)
        self.workers.clear()
        await asyncio.gather(*self._stopping, return_exceptions=True)
