"""Segmentation's part in privacy requests, on each store: a person's memberships exported,
then erased, and no table names the person afterwards."""

import pytest

from mosaic.events.v1 import privacy_request_pb2
from mosaic.platform.topics import partition_of
from mosaic.segmentation.v1 import segment_pb2
from mosaic.testing.scan import rows_mentioning
from segmentation_service.privacy import SegmentationPrivacy
from segmentation_service.store import Transition, open_store

PARTITIONS = 8


@pytest.fixture
async def store(store_settings):
    store = await open_store(store_settings)
    yield store
    await store.close()


async def test_memberships_are_exported_then_erased(store):
    await store.create(segment_pb2.Segment(segment_id="vip", name="VIP"))
    for profile_id in ("p-ada", "p-ada-old", "p-bob"):
        # A transition writes the membership, the member index, the transition and its pending copy.
        await store.record(
            [Transition("vip", profile_id, partition_of(profile_id, PARTITIONS), True, 3, f"v3:{profile_id}")]
        )
    await store.set_merged(partition_of("p-ada-old", PARTITIONS), "p-ada-old", "p-ada")
    # Due-time timers: two of Ada's (the later one set after the first), one of Bob's.
    await store.add_timer(partition_of("p-ada", PARTITIONS), 1_000, "p-ada")
    await store.add_timer(partition_of("p-ada", PARTITIONS), 1_200, "p-ada")
    await store.add_timer(partition_of("p-bob", PARTITIONS), 1_000, "p-bob")
    privacy = SegmentationPrivacy(store, PARTITIONS)
    request = privacy_request_pb2.PrivacyRequested(
        request_id="r", person_id="p-ada", profile_ids=["p-ada", "p-ada-old"]
    )
    exported = await privacy.export(request)
    assert exported.counts == {"memberships": 2}
    assert exported.document["memberships"][0] == {
        "profile_id": "p-ada",
        "segment_id": "vip",
        "member": True,
        "profile_version": 3,
    }
    assert (await privacy.erase(request)).counts == {
        "segmentation_memberships": 2,
        "segmentation_transitions": 2,
        "segmentation_timers": 2,
    }
    assert await rows_mentioning(store.db, ["p-ada"]) == []
    assert await store.timers(partition_of("p-bob", PARTITIONS), 1_000) == ["p-bob"]
    assert await store.membership("vip", "p-bob") == (True, 3)
    assert [m for m, _ in await store.members("vip", partition_of("p-bob", PARTITIONS))] == ["p-bob"]
    assert (await privacy.erase(request)).counts == {
        "segmentation_memberships": 0,
        "segmentation_transitions": 0,
        "segmentation_timers": 0,
    }
