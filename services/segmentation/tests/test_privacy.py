"""Segmentation's part in privacy requests, on each store: a person's memberships exported,
then erased, and no table names the person afterwards."""

import pytest

from mosaic.events.v1 import privacy_request_pb2
from mosaic.segmentation.v1 import segment_pb2
from mosaic.testing.scan import rows_mentioning
from segmentation_service.privacy import SegmentationPrivacy
from segmentation_service.store import open_store


@pytest.fixture
async def store(store_settings):
    store = await open_store(store_settings)
    yield store
    await store.close()


async def test_memberships_are_exported_then_erased(store):
    await store.create(segment_pb2.Segment(segment_id="vip", name="VIP"))
    for profile_id in ("p-ada", "p-ada-old", "p-bob"):
        await store.set_membership("vip", profile_id, True, 3)
    privacy = SegmentationPrivacy(store)
    request = privacy_request_pb2.PrivacyRequested(request_id="r", person_id="p-ada", profile_ids=["p-ada", "p-ada-old"])
    exported = await privacy.export(request)
    assert exported.counts == {"memberships": 2}
    assert exported.document["memberships"][0] == {"profile_id": "p-ada", "segment_id": "vip", "member": True,
                                                   "profile_version": 3}
    assert (await privacy.erase(request)).counts == {"segmentation_memberships": 2}
    assert await rows_mentioning(store.db, ["p-ada"]) == []
    assert await store.membership("vip", "p-bob") == (True, 3)
    assert (await privacy.erase(request)).counts == {"segmentation_memberships": 0}
