"""E-mail over SMTP (a real aiosmtpd server), SMS through an HTTP provider, audience sync
batches and event triggers, with templates rendered from the real profile service's traits."""

from google.protobuf import struct_pb2

from mosaic.delivery.v1 import delivery_pb2
from mosaic.delivery.v1 import delivery_service_pb2 as pb
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.testing.plugin import eventually

Status = delivery_pb2.DeliveryStatus


async def records(stub, profile_id):
    answer = await stub.ListDeliveries(pb.ListDeliveriesRequest(profile_id=profile_id))
    return {r.destination_id: r for r in answer.deliveries if r.status != Status.DELIVERY_STATUS_QUEUED}


def email_destination(smtp_receiver, **fields):
    return delivery_pb2.Destination(
        destination_id="mail",
        kind=delivery_pb2.DESTINATION_KIND_EMAIL,
        segment_id="vip",
        purpose="marketing",
        body_template="Dear {{ first_name }}, you are a VIP now.",
        email=delivery_pb2.EmailSettings(
            smtp_host="127.0.0.1",
            smtp_port=smtp_receiver.port,
            from_address="news@mosaic.example",
            subject_template="Welcome, {{ first_name }}",
        ),
        **fields,
    )


async def test_an_email_is_rendered_from_traits_and_sent_over_smtp(
    with_profiles, set_traits, stub, membership, consent, smtp_receiver
):
    await stub.CreateDestination(pb.CreateDestinationRequest(destination=email_destination(smtp_receiver)))
    await set_traits("p-1", email="ada@example.com", first_name="Ada")
    await consent("p-1")
    await membership("vip", "p-1")
    [mail] = await eventually(smtp_receiver.snapshot)
    assert mail.recipients == ["ada@example.com"] and mail.sender == "news@mosaic.example"
    assert mail.message["Subject"] == "Welcome, Ada"
    assert mail.message.get_payload().strip() == "Dear Ada, you are a VIP now."
    record = (await eventually(lambda: records(stub, "p-1")))["mail"]
    assert record.status == Status.DELIVERY_STATUS_SENT
    assert mail.message["Idempotency-Key"] == record.delivery_id


async def test_a_bounced_email_is_dead_lettered_and_one_without_an_address_fails(
    with_profiles, set_traits, stub, membership, consent, smtp_receiver
):
    smtp_receiver.refuse.add("gone@example.com")
    await stub.CreateDestination(pb.CreateDestinationRequest(destination=email_destination(smtp_receiver)))
    await set_traits("p-2", email="gone@example.com", first_name="Gone")
    await set_traits("p-3", first_name="Nomail")
    for person in ("p-2", "p-3"):
        await consent(person)
        await membership("vip", person)
    bounced = (await eventually(lambda: records(stub, "p-2")))["mail"]
    assert bounced.status == Status.DELIVERY_STATUS_DEAD_LETTERED and "550" in bounced.detail and bounced.attempts == 1
    failed = (await eventually(lambda: records(stub, "p-3")))["mail"]
    assert failed.status == Status.DELIVERY_STATUS_FAILED and "email" in failed.detail
    assert smtp_receiver.snapshot() == []


async def test_an_sms_provider_gets_the_rendered_request(
    with_profiles, set_traits, stub, membership, consent, webhook_receiver
):
    await stub.CreateDestination(
        pb.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id="sms",
                kind=delivery_pb2.DESTINATION_KIND_SMS,
                segment_id="vip",
                purpose="marketing",
                webhook_url=webhook_receiver.url("/sms"),
                headers={"Authorization": "Bearer provider-key"},
                body_template='{"to": {{ phone | tojson }}, "text": "Hi {{ first_name }}"}',
            )
        )
    )
    await set_traits("p-4", phone="+15550100", first_name="Grace")
    await consent("p-4")
    await membership("vip", "p-4")
    request = await eventually(lambda: webhook_receiver.requests and webhook_receiver.requests[0])
    assert request.body == {"to": "+15550100", "text": "Hi Grace"}
    assert request.headers["Authorization"] == "Bearer provider-key"


async def test_an_audience_sync_batches_adds_and_removes(stub, membership, consent, webhook_receiver):
    await stub.CreateDestination(
        pb.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id="crm-audience",
                kind=delivery_pb2.DESTINATION_KIND_AUDIENCE_SYNC,
                segment_id="vip",
                purpose="marketing",
                webhook_url=webhook_receiver.url("/audience"),
            )
        )
    )
    people = [f"p-{n}" for n in range(12)]
    for person in people:
        await consent(person)
    for person in people:
        await membership("vip", person)
    await membership("vip", "p-0", version=2, exited=True)

    def audience():
        members: set[str] = set()
        for request in webhook_receiver.requests:
            assert request.body["audience"] == "vip"
            members = (members | set(request.body["add"])) - set(request.body["remove"])
        return members

    await eventually(lambda: audience() == set(people) - {"p-0"})
    assert len(webhook_receiver.requests) < len(people)  # batched, not one request per change


async def test_an_event_trigger_matches_name_and_properties(stub, bus, consent, webhook_receiver):
    await stub.CreateDestination(
        pb.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id="orders",
                webhook_url=webhook_receiver.url("/orders"),
                purpose="marketing",
                triggers=[
                    delivery_pb2.Trigger(
                        kind=delivery_pb2.TRIGGER_KIND_EVENT,
                        event_name="Order Completed",
                        property_equals={"currency": struct_pb2.Value(string_value="EUR")},
                    )
                ],
            )
        )
    )
    await consent("p-5")
    for message_id, name, currency in (
        ("e1", "Order Completed", "USD"),
        ("e2", "Cart Viewed", "EUR"),
        ("e3", "Order Completed", "EUR"),
    ):
        event = event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, message_id=message_id, event=name)
        event.properties.update({"currency": currency, "total": 12})
        await bus.publish(
            topics.EVENTS_RESOLVED, "p-5", resolved_pb2.ResolvedEvent(profile_id="p-5", event=event), message_id
        )
    await eventually(lambda: records(stub, "p-5"))
    assert [
        (r.body["event"], r.body["message_id"], r.body["properties"]["total"]) for r in webhook_receiver.requests
    ] == [("Order Completed", "e3", 12)]
