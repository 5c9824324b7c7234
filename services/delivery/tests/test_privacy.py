"""Delivery's part in privacy requests, on each store: a person's deliveries exported, then
erased, and no table names the person afterwards."""

import pytest

from delivery_service.privacy import DeliveryPrivacy
from delivery_service.store import open_store
from mosaic.delivery.v1 import delivery_pb2
from mosaic.events.v1 import privacy_request_pb2
from mosaic.testing.scan import rows_mentioning


@pytest.fixture
async def store(store_settings):
    store = await open_store(store_settings)
    yield store
    await store.close()


async def test_deliveries_are_exported_then_erased(store):
    for profile_id in ("p-ada", "p-ada-old", "p-bob"):
        await store.save_delivery(
            delivery_pb2.Delivery(
                delivery_id=f"crm:vip:{profile_id}:1",
                destination_id="crm",
                profile_id=profile_id,
                status=delivery_pb2.DELIVERY_STATUS_SENT,
            )
        )
    privacy = DeliveryPrivacy(store)
    request = privacy_request_pb2.PrivacyRequested(request_id="r", person_id="p-ada", profile_ids=["p-ada-old"])
    exported = await privacy.export(request)
    assert exported.counts == {"deliveries": 2}
    assert {d["delivery_id"] for d in exported.document["deliveries"]} == {"crm:vip:p-ada:1", "crm:vip:p-ada-old:1"}
    assert (await privacy.erase(request)).counts == {"delivery_log": 2}
    assert await rows_mentioning(store.db, ["p-ada"]) == []
    assert len(await store.deliveries("p-bob")) == 1
