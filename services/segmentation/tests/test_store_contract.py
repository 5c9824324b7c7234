"""The segmentation store's contract, on SQLite and on Cassandra."""

import uuid

import pytest

from mosaic.platform.errors import AlreadyExists
from mosaic.segmentation.v1 import segment_pb2
from segmentation_service.store import open_store


@pytest.fixture
async def store(store_settings):
    store = await open_store(store_settings)
    yield store
    await store.close()


async def test_a_segment_id_can_be_taken_once(store):
    segment = segment_pb2.Segment(segment_id=f"s-{uuid.uuid4().hex[:8]}", name="first")
    await store.create(segment)
    with pytest.raises(AlreadyExists):
        await store.create(segment_pb2.Segment(segment_id=segment.segment_id, name="second"))
    [stored] = [s for s in await store.segments() if s.segment_id == segment.segment_id]
    assert stored.name == "first"


async def test_membership_is_kept_with_the_version_it_was_decided_at(store):
    pid = str(uuid.uuid4())
    assert await store.membership("vip", pid) == (False, 0)
    await store.set_membership("vip", pid, True, 3)
    assert await store.membership("vip", pid) == (True, 3)
    await store.set_membership("vip", pid, False, 4)
    assert await store.membership("vip", pid) == (False, 4)
