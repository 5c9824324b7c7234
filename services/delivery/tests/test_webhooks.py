"""Webhooks end to end on real servers: membership changes in, signed POSTs out, outcomes."""

import grpc
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from mosaic.delivery.v1 import delivery_pb2
from mosaic.delivery.v1 import delivery_service_pb2 as pb
from mosaic.platform import topics
from mosaic.testing.plugin import eventually

Status = delivery_pb2.DeliveryStatus


async def create(stub, receiver, destination_id="crm", **fields):
    fields.setdefault("segment_id", "vip")
    answer = await stub.CreateDestination(
        pb.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id=destination_id,
                name=destination_id,
                webhook_url=receiver.url(f"/{destination_id}"),
                purpose="marketing",
                **fields,
            )
        )
    )
    return answer


async def deliveries(stub, profile_id):
    return list((await stub.ListDeliveries(pb.ListDeliveriesRequest(profile_id=profile_id))).deliveries)


async def final(stub, profile_id, count=1):
    """The profile's deliveries once `count` of them are decided (not queued any more)."""

    async def check():
        records = await deliveries(stub, profile_id)
        done = [r for r in records if r.status != Status.DELIVERY_STATUS_QUEUED]
        return len(done) >= count and records

    return await eventually(check)


async def test_an_entry_is_posted_signed_with_the_custom_headers_and_the_secret_shown_once(
    stub, membership, consent, webhook_receiver
):
    created = await create(
        stub, webhook_receiver, headers={"X-Api-Key": "k-123"}, body_template="Welcome {{ profile_id }}"
    )
    secret = created.signing_secret
    assert secret.startswith("whsec_") and not created.destination.signing_secret
    await consent("p-1")
    await membership("vip", "p-1", version=3)
    request = await eventually(lambda: webhook_receiver.requests and webhook_receiver.requests[0])
    raw = webhook_receiver.raw_bodies[0]
    assert Webhook(secret).verify(raw, request.headers) == request.body  # raises when the signature is wrong
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43).verify(raw, request.headers)
    assert request.headers["X-Api-Key"] == "k-123"
    assert request.headers["Idempotency-Key"] == request.headers["webhook-id"] == request.body["delivery_id"]
    assert request.body | {"delivery_id": "-"} == {
        "type": "segment.entered",
        "segment_id": "vip",
        "profile_id": "p-1",
        "profile_version": 3.0,
        "delivery_id": "-",
        "message": "Welcome p-1",
    }
    [record] = await final(stub, "p-1")
    assert (record.status, record.attempts, record.detail) == (Status.DELIVERY_STATUS_SENT, 1, "HTTP 200")

    listed = await stub.ListDestinations(pb.ListDestinationsRequest())
    got = await stub.GetDestination(pb.GetDestinationRequest(destination_id="crm"))
    for shown in (*listed.destinations, got.destination):
        assert secret not in str(shown) and "k-123" not in str(shown)


async def test_a_redelivered_change_is_sent_once(stub, membership, consent, webhook_receiver):
    await create(stub, webhook_receiver)
    await consent("p-2")
    await membership("vip", "p-2", message_id="first")
    await membership("vip", "p-2", message_id="again")  # the same change, a second message
    await final(stub, "p-2")
    await membership("vip", "p-2", version=2)  # a later change, to know the two were handled
    await final(stub, "p-2", count=2)
    assert [r.body["profile_version"] for r in webhook_receiver.requests] == [1, 2]


async def test_exits_trigger_exit_destinations_and_entry_ones_stay_quiet(stub, membership, consent, webhook_receiver):
    await create(stub, webhook_receiver, destination_id="on-entry")
    await create(
        stub,
        webhook_receiver,
        destination_id="on-exit",
        segment_id="",
        triggers=[delivery_pb2.Trigger(kind=delivery_pb2.TRIGGER_KIND_SEGMENT_EXITED, segment_id="vip")],
    )
    await consent("p-3")
    await membership("vip", "p-3", version=1)
    await membership("vip", "p-3", version=2, exited=True)
    await final(stub, "p-3", count=2)
    assert sorted((r.path, r.body["type"]) for r in webhook_receiver.requests) == [
        ("/on-entry", "segment.entered"),
        ("/on-exit", "segment.exited"),
    ]


async def test_without_consent_nothing_is_queued_and_the_outcome_says_why(
    stub, bus, membership, consent, webhook_receiver
):
    await create(stub, webhook_receiver)
    await consent("p-4", granted=False)
    await membership("vip", "p-4")
    [record] = await final(stub, "p-4")
    assert record.status == Status.DELIVERY_STATUS_SUPPRESSED and "marketing" in record.detail
    info = await bus._js.stream_info(topics.DELIVERY_OUTCOME.stream)
    outcome = topics.DELIVERY_OUTCOME.message.FromString(
        (await bus._js.get_msg(topics.DELIVERY_OUTCOME.stream, info.state.last_seq)).data
    )
    assert (
        outcome.delivery.delivery_id == record.delivery_id
        and outcome.delivery.status == Status.DELIVERY_STATUS_SUPPRESSED
    )
    assert webhook_receiver.requests == []


@pytest.fixture
def no_loopback(delivery_env):
    delivery_env["MOSAIC_DELIVERY_ALLOW_ADDRESSES"] = ""


async def test_a_loopback_destination_is_refused_when_the_deployment_does_not_allow_it(no_loopback, stub):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateDestination(
            pb.CreateDestinationRequest(
                destination=delivery_pb2.Destination(
                    destination_id="inside",
                    webhook_url="http://127.0.0.1:8080/admin",
                    segment_id="vip",
                    purpose="marketing",
                )
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "destination.webhook_url" in refused.value.details() and "loopback" in refused.value.details()


async def test_a_frequency_cap_suppresses_what_exceeds_it_per_person(stub, membership, consent, webhook_receiver):
    await create(stub, webhook_receiver, frequency_cap=delivery_pb2.FrequencyCap(max_deliveries=2, window_seconds=3600))
    await consent("p-6")
    await consent("p-7")
    for version in (1, 2, 3):
        await membership("vip", "p-6", version=version)
    await membership("vip", "p-7")
    records = await final(stub, "p-6", count=3)
    assert sorted(r.status for r in records) == [Status.DELIVERY_STATUS_SENT] * 2 + [Status.DELIVERY_STATUS_SUPPRESSED]
    assert "frequency cap" in next(r.detail for r in records if r.status == Status.DELIVERY_STATUS_SUPPRESSED)
    [other] = await final(stub, "p-7")  # the cap is per person
    assert other.status == Status.DELIVERY_STATUS_SENT
