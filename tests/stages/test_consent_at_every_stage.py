"""Consent enforced at every stage, the six services in-process on one real nats-server (the
embedded store) and a real webhook receiver: one person's decisions, recorded by the consent
service, reach ingestion (what analytics forbids is not stored), the profile (a trait tied to
advertising is withheld), segmentation (a segment tied to marketing lets them in and out) and
delivery (the webhook goes only while marketing is granted)."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from mosaic.consent.v1 import consent_pb2, consent_service_pb2, consent_service_pb2_grpc
from mosaic.delivery.v1 import delivery_pb2, delivery_service_pb2, delivery_service_pb2_grpc
from mosaic.events.v1 import event_pb2
from mosaic.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from mosaic.ingestion.v1 import ingestion_service_pb2 as ingest_pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc
from mosaic.profile.v1 import profile_service_pb2, profile_service_pb2_grpc
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2, segmentation_service_pb2_grpc
from mosaic.testing.plugin import eventually
from mosaic.testing.receivers import WebhookReceiver

RULES = json.dumps({"analytics": {"drop": ["track"]}, "advertising": {"strip": ["context.device.advertisingId"]}})


@pytest.fixture
def receiver():
    started = WebhookReceiver().start()
    yield started
    started.stop()


def identify(**traits) -> event_pb2.Event:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id="ada", message_id=uuid.uuid4().hex)
    event.traits.update(traits)
    return event


def track() -> event_pb2.Event:
    event = event_pb2.Event(
        type=event_pb2.EVENT_TYPE_TRACK, event="Product Viewed", user_id="ada", message_id=uuid.uuid4().hex
    )
    event.context.update({"device": {"advertisingId": "idfa-1"}})
    return event


async def test_one_persons_consent_is_enforced_from_the_door_to_the_webhook(start_services, receiver):
    mesh = await start_services("identity")
    await start_services(
        "ingestion",
        "consent",
        "profile",
        MOSAIC_IDENTITY_ADDRESS=mesh.address("identity"),
        MOSAIC_INGEST_CONSENT_RULES=RULES,
        MOSAIC_PROFILE_TRAIT_PURPOSES="ad_*=advertising",
    )
    await start_services(
        "segmentation",
        "delivery",
        MOSAIC_PROFILE_ADDRESS=mesh.address("profile"),
        MOSAIC_DELIVERY_ALLOW_ADDRESSES="loopback",
    )
    channels = {name: grpc.aio.insecure_channel(mesh.address(name)) for name in mesh.services}
    try:
        ingestion = ingestion_service_pb2_grpc.IngestionServiceStub(channels["ingestion"])
        identity = identity_service_pb2_grpc.IdentityServiceStub(channels["identity"])
        consent = consent_service_pb2_grpc.ConsentServiceStub(channels["consent"])
        profiles = profile_service_pb2_grpc.ProfileServiceStub(channels["profile"])
        segments = segmentation_service_pb2_grpc.SegmentationServiceStub(channels["segmentation"])
        delivery = delivery_service_pb2_grpc.DeliveryServiceStub(channels["delivery"])

        async def send(*events) -> list[int]:
            answer = await ingestion.Ingest(ingest_pb.IngestRequest(source_id="web", events=events))
            return [r.status for r in answer.results]

        async def decide(purpose: str, granted: bool) -> None:
            await consent.SetConsent(
                consent_service_pb2.SetConsentRequest(
                    decision=consent_pb2.ConsentDecision(profile_id=person, purpose=purpose, granted=granted)
                )
            )

        await segments.CreateSegment(
            segmentation_service_pb2.CreateSegmentRequest(
                segment=segment_pb2.Segment(
                    segment_id="newsletter", name="newsletter", definition='traits.plan = "pro"', purpose="marketing"
                )
            )
        )
        await delivery.CreateDestination(
            delivery_service_pb2.CreateDestinationRequest(
                destination=delivery_pb2.Destination(
                    destination_id="crm",
                    webhook_url=receiver.url("/crm"),
                    segment_id="newsletter",
                    purpose="marketing",
                )
            )
        )
        assert await send(identify(plan="pro", ad_id="idfa-1")) == [ingest_pb.EVENT_STATUS_ACCEPTED]

        async def found():
            try:
                answer = await identity.Lookup(
                    identity_service_pb2.LookupRequest(identifier=identity_pb2.Identifier(type="user_id", value="ada"))
                )
            except grpc.aio.AioRpcError:
                return ""
            return answer.profile_id

        person = await eventually(found)

        async def profile():
            try:
                return (await profiles.GetProfile(profile_service_pb2.GetProfileRequest(profile_id=person))).profile
            except grpc.aio.AioRpcError:
                return None

        # GDPR (the default law): nothing granted. The track event is not stored, the ad trait
        # is withheld, ada is not in the marketing segment and no webhook goes.
        assert await send(track()) == [ingest_pb.EVENT_STATUS_SUPPRESSED]
        stored = await eventually(profile)
        assert stored.traits["ad_id"].withheld and stored.traits["plan"].value.string_value == "pro"

        async def member() -> bool:
            answer = await segments.IsMember(
                segmentation_service_pb2.IsMemberRequest(segment_id="newsletter", profile_id=person)
            )
            return answer.member

        assert not await member()

        # Marketing and analytics granted: ada enters, the webhook goes, her track events are kept.
        await decide("marketing", True)
        await decide("analytics", True)
        await eventually(member)
        request = await eventually(lambda: receiver.requests and receiver.requests[0])
        assert request.body["profile_id"] == person and request.body["type"] == "segment.entered"
        await eventually(lambda: _status(send(track()), ingest_pb.EVENT_STATUS_ACCEPTED))

        # Marketing withdrawn: ada leaves the segment; the exit triggers nothing here.
        await decide("marketing", False)
        await eventually(lambda: _not(member()))
        assert len(receiver.requests) == 1
        with_consent = await profile()
        assert not with_consent.consent["marketing"].granted and with_consent.consent["analytics"].granted
    finally:
        for channel in channels.values():
            await channel.close()


async def _status(statuses, expected: int) -> bool:
    return await statuses == [expected]


async def _not(answer) -> bool:
    return not await answer
