"""Consent read again just before each send, on real servers: a purpose withdrawn between
planning and sending stops a webhook, an e-mail (real SMTP) and an audience add, recorded as
SUPPRESSED (the withdrawal's consent.changed notice drops the answer the workers kept); while
the consent service is down a job waits unsent, then goes, unless the answer for its person is
kept (asking before every send, MOSAIC_DELIVERY_CONSENT_CACHE_SECONDS=0, keeps none)."""

import asyncio

import pytest

from consent_service.app import build as build_consent
from consent_service.config import Settings as ConsentSettings
from mosaic.delivery.v1 import delivery_pb2
from mosaic.delivery.v1 import delivery_service_pb2 as pb
from mosaic.platform.server import Service
from mosaic.testing.plugin import eventually
from mosaic.testing.receivers import WebhookReceiver

from .test_channels import email_destination, records

Status = delivery_pb2.DeliveryStatus
WITHDRAWN = "consent to 'marketing' not granted at send time"


async def webhook(stub, receiver, destination_id="crm", **fields):
    fields.setdefault("segment_id", "vip")
    await stub.CreateDestination(
        pb.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id=destination_id,
                webhook_url=receiver.url(f"/{destination_id}"),
                purpose="marketing",
                **fields,
            )
        )
    )


async def queued(stub, profile_id):
    listed = (await stub.ListDeliveries(pb.ListDeliveriesRequest(profile_id=profile_id))).deliveries
    return [d for d in listed if d.status == Status.DELIVERY_STATUS_QUEUED]


async def test_a_consent_withdrawn_between_planning_and_the_retry_stops_the_send(
    stub, membership, consent, webhook_receiver
):
    # The first attempt is answered "come back in 2 s": the job waits in its queue, planned.
    webhook_receiver.status = 503
    webhook_receiver.answer_headers["Retry-After"] = "2"
    await webhook(stub, webhook_receiver)
    await consent("p-1")
    await membership("vip", "p-1")
    await eventually(lambda: webhook_receiver.requests)
    await consent("p-1", granted=False)
    webhook_receiver.status = 200
    record = (await eventually(lambda: records(stub, "p-1")))["crm"]
    assert (record.status, record.detail) == (Status.DELIVERY_STATUS_SUPPRESSED, WITHDRAWN)
    assert len(webhook_receiver.requests) == 1  # the retry never went out
    assert (await stub.ListDeadLetters(pb.ListDeadLettersRequest())).dead_letters == []


async def test_an_email_waiting_for_its_rate_limit_is_not_sent_once_consent_is_withdrawn(
    with_profiles, set_traits, stub, bus, membership, consent, smtp_receiver
):
    # One mail every 5 s: the second job is planned (consent granted) and waits for its token.
    destination = email_destination(smtp_receiver, limits=delivery_pb2.Limits(rate_per_second=0.2))
    await stub.CreateDestination(pb.CreateDestinationRequest(destination=destination))
    for person, address in (("p-a", "a@example.com"), ("p-b", "b@example.com")):
        await set_traits(person, email=address, first_name=person)
        await consent(person)
    await membership("vip", "p-a")
    await eventually(smtp_receiver.snapshot)
    await membership("vip", "p-b")
    await eventually(lambda: queued(stub, "p-b"))  # planned with consent, waiting for its token
    await consent("p-b", granted=False)
    record = (await eventually(lambda: records(stub, "p-b")))["mail"]
    assert (record.status, record.detail) == (Status.DELIVERY_STATUS_SUPPRESSED, WITHDRAWN)
    assert [m.recipients for m in smtp_receiver.snapshot()] == [["a@example.com"]]
    assert (await records(stub, "p-a"))["mail"].status == Status.DELIVERY_STATUS_SENT


async def test_an_audience_add_withdrawn_before_its_batch_goes_is_left_out_and_removes_still_go(
    stub, membership, consent, webhook_receiver
):
    webhook_receiver.status = 503
    webhook_receiver.answer_headers["Retry-After"] = "2"
    await stub.CreateDestination(
        pb.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id="ads",
                kind=delivery_pb2.DESTINATION_KIND_AUDIENCE_SYNC,
                segment_id="vip",
                purpose="marketing",
                webhook_url=webhook_receiver.url("/audience"),
                audience=delivery_pb2.AudienceSettings(batch_size=3, linger_seconds=1),
                # An ack wait of 2 * 2 + 5 s, within the wait below: Debian's nats-server 2.9.10 can
                # hand a job nak'ed with a delay to a pull request that has just expired, and then
                # holds it until its ack wait (fixed upstream in 2024: nats-server #5338).
                limits=delivery_pb2.Limits(timeout_seconds=2),
            )
        )
    )
    for person in ("p-1", "p-2", "p-3"):
        await consent(person)
    await membership("vip", "p-1")
    await membership("vip", "p-2")
    await membership("vip", "p-3", exited=True)
    await eventually(lambda: webhook_receiver.requests)
    # p-3 withdraws too: leaving an audience needs no consent, so its remove still goes.
    await consent("p-2", granted=False)
    await consent("p-3", granted=False)
    webhook_receiver.status = 200

    def sent_again() -> tuple[list[str], list[str]] | None:
        """The adds and removes of the requests after the first, once p-1's add and p-3's remove
        are among them. Mostly one request; two when nats-server 2.9.10 held one of the jobs until
        its ack wait (see above), and each went in a batch of its own."""
        later = [request.body for request in webhook_receiver.requests[1:]]
        adds = sorted(person for body in later for person in body["add"])
        removes = sorted(person for body in later for person in body["remove"])
        return (adds, removes) if "p-1" in adds and "p-3" in removes else None

    first = webhook_receiver.requests[0].body
    assert (sorted(first["add"]), first["remove"]) == (["p-1", "p-2"], ["p-3"])
    assert await eventually(sent_again) == (["p-1"], ["p-3"])  # p-2's add left out, nothing sent twice
    suppressed = (await eventually(lambda: records(stub, "p-2")))["ads"]
    assert (suppressed.status, suppressed.detail) == (Status.DELIVERY_STATUS_SUPPRESSED, WITHDRAWN)


@pytest.fixture
def ask_every_send(delivery_env):
    delivery_env["MOSAIC_DELIVERY_CONSENT_CACHE_SECONDS"] = "0"


async def test_while_consent_does_not_answer_a_planned_job_waits_unsent_and_unspent_then_goes(
    ask_every_send, consent_service, make_settings, stub, membership, consent
):
    receiver = WebhookReceiver(status=503).start()
    # The retry comes due after consent has stopped, however slowly it stops on a busy machine.
    receiver.answer_headers["Retry-After"] = "5"
    try:
        await webhook(stub, receiver, "crm", limits=delivery_pb2.Limits(max_attempts=2))
        await consent("p-9")
        await membership("vip", "p-9")
        await eventually(lambda: receiver.requests)
        port = consent_service.port
        await consent_service.stop()  # the retry finds nobody to ask
        receiver.status = 200
        await asyncio.sleep(6)  # past the retry's due time, and more
        assert len(receiver.requests) == 1
        [queued] = (await stub.ListDeliveries(pb.ListDeliveriesRequest(profile_id="p-9"))).deliveries
        assert queued.status == Status.DELIVERY_STATUS_QUEUED
        settings = ConsentSettings(
            make_settings("consent", MOSAIC_GRACE_SECONDS="1", MOSAIC_PARTITIONS="2", MOSAIC_GRPC_PORT=str(port))
        )
        again = Service(settings.platform, lambda runtime: build_consent(runtime, settings))
        await again.start()
        try:
            record = (await eventually(lambda: records(stub, "p-9"), timeout=30))["crm"]
            # Sent on its second attempt: the wait for consent spent none of the budget of 2.
            assert (record.status, record.attempts) == (Status.DELIVERY_STATUS_SENT, 2)
            assert len(receiver.requests) == 2
        finally:
            await again.stop()
    finally:
        receiver.stop()


async def test_a_retry_goes_on_the_answer_kept_for_its_person_while_consent_is_down(
    consent_service, stub, membership, consent, webhook_receiver
):
    # As above, but with the answers kept (the default): the first attempt's answer is good
    # until a notice drops it or it ages out, so the retry does not wait for the consent service.
    webhook_receiver.status = 503
    webhook_receiver.answer_headers["Retry-After"] = "2"
    await webhook(stub, webhook_receiver, limits=delivery_pb2.Limits(max_attempts=2))
    await consent("p-9")
    await membership("vip", "p-9")
    await eventually(lambda: webhook_receiver.requests)
    await consent_service.stop()
    webhook_receiver.status = 200
    record = (await eventually(lambda: records(stub, "p-9"), timeout=30))["crm"]
    assert (record.status, record.attempts) == (Status.DELIVERY_STATUS_SENT, 2)
    assert len(webhook_receiver.requests) == 2
