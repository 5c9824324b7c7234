"""An erased person gets no delivery afterwards, on a real nats-server beside the real consent
service and a real webhook receiver: an event resolved to the erased profile (and a segment
entry) that reaches the planner after delivery's part of the erasure plans nothing, records
nothing and sends nothing, while the same triggers for someone else go out."""

from __future__ import annotations

from delivery_service.jobs import JobQueue
from mosaic.consent.v1 import privacy_pb2
from mosaic.delivery.v1 import delivery_pb2
from mosaic.delivery.v1 import delivery_service_pb2 as pb
from mosaic.events.v1 import event_pb2, privacy_request_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.testing.plugin import eventually


def same_partition_as(profile_id: str, partitions: int) -> str:
    """Another person whose messages share the profile's partition, so are consumed after its."""
    wanted = topics.partition_of(profile_id, partitions)
    return next(f"p-kept-{n}" for n in range(1000) if topics.partition_of(f"p-kept-{n}", partitions) == wanted)


async def ordered(bus, profile_id: str, message_id: str) -> None:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, message_id=message_id, event="Order Completed")
    await bus.publish(
        topics.EVENTS_RESOLVED, profile_id, resolved_pb2.ResolvedEvent(profile_id=profile_id, event=event), message_id
    )


async def erase(bus, profile_id: str, receipts: list) -> None:
    """Publish an erasure of the person and wait for delivery's final receipt of it."""
    request = privacy_request_pb2.PrivacyRequested(
        request_id=f"erase-{profile_id}", kind=privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE, person_id=profile_id
    )
    await bus.publish(topics.PRIVACY_REQUESTED, profile_id, request, f"erase-{profile_id}")
    await eventually(lambda: any(r.participant == "delivery" and r.final for r in receipts))


async def test_a_trigger_read_after_the_erasure_sends_and_records_nothing(
    stub, bus, consent, membership, webhook_receiver, service
):
    await stub.CreateDestination(
        pb.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id="crm",
                webhook_url=webhook_receiver.url("/crm"),
                purpose="marketing",
                segment_id="vip",
                triggers=[
                    delivery_pb2.Trigger(kind=delivery_pb2.TRIGGER_KIND_EVENT, event_name="Order Completed"),
                    delivery_pb2.Trigger(kind=delivery_pb2.TRIGGER_KIND_SEGMENT_ENTERED, segment_id="vip"),
                ],
            )
        )
    )
    gone, kept = "p-gone", same_partition_as("p-gone", service.settings.partitions)
    for person in (gone, kept):
        await consent(person)  # granted: consent alone would let the deliveries go out
    receipts: list[privacy_request_pb2.PrivacyReceipt] = []

    async def on_receipt(msg) -> None:
        receipts.append(privacy_request_pb2.PrivacyReceipt.FromString(msg.data))

    await bus._nc.subscribe(topics.PRIVACY_RECEIPT.wildcard, cb=on_receipt)
    await erase(bus, gone, receipts)

    # Resolved (or segmented) before the upstream services did their part, read after delivery's.
    await ordered(bus, gone, "late-order")
    await membership("vip", gone)
    await ordered(bus, kept, "kept-order")  # same partitions, so read after the erased person's
    await membership("vip", kept)

    async def kept_delivered() -> bool:
        sent = (await stub.ListDeliveries(pb.ListDeliveriesRequest(profile_id=kept))).deliveries
        return len([d for d in sent if d.status == delivery_pb2.DELIVERY_STATUS_SENT]) == 2

    await eventually(kept_delivered)
    assert {r.body["profile_id"] for r in webhook_receiver.requests} == {kept}
    assert (await stub.ListDeliveries(pb.ListDeliveriesRequest(profile_id=gone))).deliveries == []


async def test_a_job_queued_after_the_erasure_emptied_the_queue_is_dropped_unsent(
    stub, bus, consent, webhook_receiver, service, nats_server
):
    """The planner decided before the tombstone and queued after the erasure removed the
    person's jobs from the stream: the worker acks the job unsent and records nothing."""
    await stub.CreateDestination(
        pb.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id="crm", webhook_url=webhook_receiver.url("/crm"), purpose="marketing"
            )
        )
    )
    gone, kept = "p-gone", "p-kept"
    for person in (gone, kept):
        await consent(person)  # granted: consent alone would let both go out
    receipts: list[privacy_request_pb2.PrivacyReceipt] = []

    async def on_receipt(msg) -> None:
        receipts.append(privacy_request_pb2.PrivacyReceipt.FromString(msg.data))

    await bus._nc.subscribe(topics.PRIVACY_RECEIPT.wildcard, cb=on_receipt)
    await erase(bus, gone, receipts)

    queue = await JobQueue.connect(nats_server.url)
    try:
        for person in (gone, kept):
            await queue.put(
                delivery_pb2.DeliveryJob(
                    delivery_id=f"crm:event:{person}",
                    destination_id="crm",
                    profile_id=person,
                    trigger="event:Order Completed",
                    payload=f'{{"profile_id":"{person}"}}',
                )
            )

        async def both_taken() -> bool:
            return await queue.pending("crm") == 0 and len(webhook_receiver.requests) >= 1

        await eventually(both_taken)
    finally:
        await queue.close()
    assert {r.body["profile_id"] for r in webhook_receiver.requests} == {kept}
    assert (await stub.ListDeliveries(pb.ListDeliveriesRequest(profile_id=gone))).deliveries == []
