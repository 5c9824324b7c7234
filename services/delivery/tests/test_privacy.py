"""Delivery's part in privacy requests, on each store: a person's deliveries exported, then
erased, and no table names the person afterwards; nor a queued job or an outcome in the streams."""

import pytest

from delivery_service.jobs import JobQueue
from delivery_service.privacy import DeliveryPrivacy
from delivery_service.store import open_store
from mosaic.consent.v1 import privacy_pb2
from mosaic.delivery.v1 import delivery_pb2
from mosaic.events.v1 import delivery_outcome_pb2, privacy_request_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.privacy import Participant
from mosaic.testing.scan import messages_mentioning, rows_mentioning


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


async def test_an_erasure_removes_the_persons_queued_jobs_and_outcomes_from_the_streams(store, nats_server):
    queue = await JobQueue.connect(nats_server.url)  # no worker: a dead endpoint's queue holds them
    bus = await Bus.connect(nats_server.url, "delivery", 4)
    await bus.ensure_streams()
    try:
        for profile_id in ("p-ada", "p-ada-old", "p-bob"):
            await queue.put(
                delivery_pb2.DeliveryJob(delivery_id=f"crm:{profile_id}", destination_id="crm", profile_id=profile_id)
            )
            outcome = delivery_outcome_pb2.DeliveryOutcome(delivery=delivery_pb2.Delivery(profile_id=profile_id))
            await bus.publish(topics.DELIVERY_OUTCOME, profile_id, outcome, f"outcome:{profile_id}")
        privacy = DeliveryPrivacy(store)
        request = privacy_request_pb2.PrivacyRequested(
            request_id="r", kind=privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE, person_id="p-ada", profile_ids=["p-ada-old"]
        )
        await Participant("delivery", bus, privacy.export, privacy.erase)(request)
        receipt = await bus.jetstream.get_last_msg(topics.PRIVACY_RECEIPT.stream, topics.PRIVACY_RECEIPT.wildcard)
        removed = privacy_request_pb2.PrivacyReceipt.FromString(receipt.data).removed
        assert (removed["stream:DELIVERY_JOBS"], removed["stream:DELIVERY_OUTCOME"]) == (2, 2)
        assert [s for s, _, _ in await messages_mentioning(nats_server.url, ["p-ada"])] == ["PRIVACY_RECEIPT"]
        assert {s for s, _, _ in await messages_mentioning(nats_server.url, ["p-bob"])} == {
            "DELIVERY_JOBS",
            "DELIVERY_OUTCOME",
        }
    finally:
        await bus.close()
        await queue.close()
