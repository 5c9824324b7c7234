"""Consent recorded before the services that keep a copy were deployed, on one real nats-server
(the embedded store): the profile service and segmentation start after the person's notice has
left the stream, so they do not know the person's consent until the consent service announces
everyone again (RepublishConsent); then the profile keeps it, a trait of the granted purpose is
given, and a segment tied to the purpose lets the person in. A second run changes nothing."""

from __future__ import annotations

import grpc
import nats

from mosaic.consent.v1 import consent_pb2, consent_service_pb2, consent_service_pb2_grpc
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform import topics
from mosaic.profile.v1 import profile_service_pb2, profile_service_pb2_grpc
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2, segmentation_service_pb2_grpc
from mosaic.testing.plugin import eventually

PERSON = "p-ada"


async def stream_messages(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return (await nc.jetstream().stream_info(topics.CONSENT_CHANGED.stream)).state.messages
    finally:
        await nc.close()


async def purge(nats_url: str) -> None:
    """What the stream's 7 days of age do to a notice."""
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().purge_stream(topics.CONSENT_CHANGED.stream)
    finally:
        await nc.close()


async def test_services_deployed_after_consent_was_recorded_start_from_the_ledger_once_republished(start_services):
    mesh = await start_services("consent", MOSAIC_PRIVACY_PARTICIPANTS="consent")
    channels = [grpc.aio.insecure_channel(mesh.address("consent"))]
    try:
        consent = consent_service_pb2_grpc.ConsentServiceStub(channels[0])
        await consent.SetConsent(
            consent_service_pb2.SetConsentRequest(
                decision=consent_pb2.ConsentDecision(profile_id=PERSON, purpose="personalisation", granted=True)
            )
        )
        await eventually(lambda: _at_least(stream_messages(mesh.nats_url), 1))
        await purge(mesh.nats_url)

        await start_services("profile", MOSAIC_PROFILE_TRAIT_PURPOSES="favourite_colour=personalisation")
        await start_services("segmentation", MOSAIC_PROFILE_ADDRESS=mesh.address("profile"))
        channels += [grpc.aio.insecure_channel(mesh.address(n)) for n in ("profile", "segmentation")]
        profiles = profile_service_pb2_grpc.ProfileServiceStub(channels[1])
        segments = segmentation_service_pb2_grpc.SegmentationServiceStub(channels[2])
        await segments.CreateSegment(
            segmentation_service_pb2.CreateSegmentRequest(
                segment=segment_pb2.Segment(
                    segment_id="teal",
                    name="teal",
                    definition='traits.favourite_colour = "teal"',
                    purpose="personalisation",
                )
            )
        )
        await identify(mesh, favourite_colour="teal", plan="pro")

        async def profile():
            try:
                return (await profiles.GetProfile(profile_service_pb2.GetProfileRequest(profile_id=PERSON))).profile
            except grpc.aio.AioRpcError:
                return None

        async def member() -> bool:
            request = segmentation_service_pb2.IsMemberRequest(segment_id="teal", profile_id=PERSON)
            return (await segments.IsMember(request)).member

        # The consent of before is invisible: the trait is withheld (GDPR: opt-in), ada is out.
        before = await eventually(profile)
        assert not before.consent and before.traits["favourite_colour"].withheld
        await eventually(lambda: _drained(mesh, {topics.PROFILE_UPDATED: "segmentation"}))
        assert not await member()

        done = await consent.RepublishConsent(consent_service_pb2.RepublishConsentRequest())
        assert done.persons == 1 and done.run_id
        after = await eventually(lambda: _with_consent(profile()))
        assert after.consent["personalisation"].granted and after.version == before.version + 1
        assert after.traits["favourite_colour"].value.string_value == "teal"
        await eventually(member)

        # Again: the notice goes out, the profile keeps no new version.
        published = await stream_messages(mesh.nats_url)
        assert (await consent.RepublishConsent(consent_service_pb2.RepublishConsentRequest())).persons == 1
        await eventually(lambda: _at_least(stream_messages(mesh.nats_url), published + 1))
        await eventually(lambda: _drained(mesh, {topics.CONSENT_CHANGED: "profile"}))
        assert (await profile()).version == after.version
    finally:
        for channel in channels:
            await channel.close()


async def identify(mesh, **traits) -> None:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id="ada", message_id="m-1")
    event.timestamp.GetCurrentTime()
    event.traits.update(traits)
    resolved = resolved_pb2.ResolvedEvent(
        profile_id=PERSON, event=event, identifiers=[identity_pb2.Identifier(type="user_id", value="ada")]
    )
    await mesh.services["profile"].runtime.bus.publish(topics.EVENTS_RESOLVED, PERSON, resolved, "m-1")


async def _at_least(count, expected: int) -> bool:
    return await count >= expected


async def _with_consent(answer):
    profile = await answer
    return profile if profile is not None and profile.consent else None


async def _drained(mesh, consumers) -> bool:
    return await mesh.backlog(consumers) == 0
