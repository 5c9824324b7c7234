"""The delivery store's contract, on SQLite and on Cassandra."""

import uuid

import pytest

from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform.errors import AlreadyExists
from delivery_service.store import open_store


@pytest.fixture
async def store(store_settings):
    store = await open_store(store_settings)
    yield store
    await store.close()


async def test_a_destination_id_can_be_taken_once(store):
    destination_id = f"d-{uuid.uuid4().hex[:8]}"
    await store.create_destination(delivery_pb2.Destination(destination_id=destination_id, name="first"))
    with pytest.raises(AlreadyExists):
        await store.create_destination(delivery_pb2.Destination(destination_id=destination_id, name="second"))
    assert destination_id in {d.destination_id for d in await store.destinations()}


async def test_a_delivery_is_found_by_its_idempotency_key(store):
    pid = str(uuid.uuid4())
    assert await store.delivery(pid, "hook:vip:1") is None
    record = delivery_pb2.Delivery(delivery_id="hook:vip:1", profile_id=pid, status=delivery_pb2.DELIVERY_STATUS_SENT)
    await store.save_delivery(record)
    await store.save_delivery(record)
    assert (await store.delivery(pid, "hook:vip:1")).status == delivery_pb2.DELIVERY_STATUS_SENT
    assert len(await store.deliveries(pid)) == 1
