"""The profile store's contract, on SQLite and on Cassandra."""

import uuid

import pytest

from mosaic.profile.v1 import profile_pb2
from profile_service.store import open_store


@pytest.fixture
async def store(store_settings):
    store = await open_store(store_settings)
    yield store
    await store.close()


def snapshot(profile_id: str, version: int) -> profile_pb2.Snapshot:
    profile = profile_pb2.Profile(profile_id=profile_id, version=version, event_count=version)
    return profile_pb2.Snapshot(profile_id=profile_id, version=version, cause_message_id=f"m{version}", profile=profile)


async def test_a_saved_snapshot_is_the_latest_and_marks_its_event(store):
    pid = str(uuid.uuid4())
    assert await store.latest(pid) is None
    await store.save(snapshot(pid, 1))
    await store.save(snapshot(pid, 2))
    assert (await store.latest(pid)).version == 2
    assert await store.applied_version(pid, "m1") == 1
    assert await store.applied_version(pid, "m3") is None
    assert (await store.snapshot(pid, 1)).profile.event_count == 1


async def test_saving_the_same_snapshot_again_changes_nothing(store):
    pid = str(uuid.uuid4())
    await store.save(snapshot(pid, 1))
    await store.save(snapshot(pid, 1))
    assert [s.version for s in await store.list_snapshots(pid, 10, 10)] == [1]


async def test_snapshots_page_newest_first_across_partition_buckets(store):
    pid = str(uuid.uuid4())
    for version in range(995, 1006):  # crosses the bucket boundary at 1000
        await store.save(snapshot(pid, version))
    first = await store.list_snapshots(pid, 1006, 4)
    assert [s.version for s in first] == [1005, 1004, 1003, 1002]
    second = await store.list_snapshots(pid, 1002, 4)
    assert [s.version for s in second] == [1001, 1000, 999, 998]
    rest = await store.list_snapshots(pid, 998, 10)
    assert [s.version for s in rest] == [997, 996, 995]
