"""The sweeper of held jobs, on a fixed clock over a real store and a real nats-server."""

import time

import pytest

from delivery_service.destinations import DestinationCache
from delivery_service.held import Sweeper
from delivery_service.jobs import JobQueue
from delivery_service.store import open_store
from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.ownership import FixedPartitions

Status = delivery_pb2.DeliveryStatus


@pytest.fixture
async def parts(make_settings, nats_server):
    settings = make_settings("delivery")
    store = await open_store(settings)
    queue = await JobQueue.connect(nats_server.url)
    bus = await Bus.connect(nats_server.url, "test", 2)
    await bus.ensure_streams([topics.DELIVERY_OUTCOME])
    cache = DestinationCache(store)
    yield store, queue, bus, cache
    await bus.close()
    await queue.close()
    await store.close()


async def hold(
    store, delivery_id: str, due: float, destination_id: str = "offers", status=Status.DELIVERY_STATUS_SCHEDULED
):
    job = delivery_pb2.DeliveryJob(delivery_id=delivery_id, destination_id=destination_id, profile_id="p-1")
    job.not_before.FromNanoseconds(int(due * 1e9))
    await store.hold(job, 0)
    await store.save_delivery(
        delivery_pb2.Delivery(delivery_id=delivery_id, destination_id=destination_id, profile_id="p-1", status=status)
    )


async def queued(queue, destination_id: str = "offers") -> list[str]:
    feed = await queue.feed(destination_id, 10, 30, late=print)
    messages = await feed.fetch(10, 1)
    await feed.close()
    return [delivery_pb2.DeliveryJob.FromString(m.data).delivery_id for m in messages]


async def test_a_held_job_is_queued_once_when_due_and_only_then(parts):
    store, queue, bus, cache = parts
    await store.create_destination(delivery_pb2.Destination(destination_id="offers"))
    due = time.time() + 3600
    await hold(store, "offers:1", due)
    sweeper = Sweeper(store, cache, queue, bus, FixedPartitions([0, 1]), interval=1)
    assert await sweeper.sweep(due - 1) == 0
    assert (await store.delivery("p-1", "offers:1")).status == Status.DELIVERY_STATUS_SCHEDULED
    assert await sweeper.sweep(due) == 1
    assert (await store.delivery("p-1", "offers:1")).status == Status.DELIVERY_STATUS_QUEUED
    assert await sweeper.sweep(due + 60) == 0  # forgotten once queued
    assert await queued(queue) == ["offers:1"]


async def test_a_held_job_decided_meanwhile_or_of_a_deleted_destination_is_not_queued(parts):
    store, queue, bus, cache = parts
    await store.create_destination(delivery_pb2.Destination(destination_id="offers"))
    due = time.time() + 3600
    await hold(store, "offers:sent", due, status=Status.DELIVERY_STATUS_SENT)
    await hold(store, "gone:1", due, destination_id="gone")
    sweeper = Sweeper(store, cache, queue, bus, FixedPartitions([0]), interval=1)
    assert await sweeper.sweep(due) == 0
    discarded = await store.delivery("p-1", "gone:1")
    assert discarded.status == Status.DELIVERY_STATUS_DISCARDED and "deleted" in discarded.detail
    assert (await store.delivery("p-1", "offers:sent")).status == Status.DELIVERY_STATUS_SENT
    assert await store.due_jobs(0, due, 10) == []
    assert await queued(queue) == []
