"""Segments tied to a consent purpose, in-process on a real nats-server: people without the
purpose are left out (incrementally and by the backfill), and a change of consent carried by
profile.updated moves them in and out."""

import grpc
import pytest
from google.protobuf import struct_pb2

from mosaic.events.v1 import profile_updated_pb2, segment_membership_pb2
from mosaic.platform import topics
from mosaic.platform.server import Service
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2_grpc
from mosaic.segmentation.v1 import segmentation_service_pb2 as pb
from mosaic.testing.plugin import eventually
from segmentation_service.app import build
from segmentation_service.config import Settings

from .test_service import violation


@pytest.fixture
async def service(make_settings):
    settings = Settings(make_settings("segmentation", MOSAIC_GRACE_SECONDS="1"), "", 1.0)
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def stub(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield segmentation_service_pb2_grpc.SegmentationServiceStub(channel)


def tied(segment_id: str, definition: str, purpose: str = "marketing") -> pb.CreateSegmentRequest:
    return pb.CreateSegmentRequest(
        segment=segment_pb2.Segment(segment_id=segment_id, name=segment_id, definition=definition, purpose=purpose)
    )


def decision(granted: bool) -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.struct_value.update({"granted": granted, "change": "grant" if granted else "withdraw"})
    return value


async def update(service, profile_id: str, version: int, *changes: tuple[str, struct_pb2.Value | None]) -> None:
    message = profile_updated_pb2.ProfileUpdated(profile_id=profile_id, version=version)
    for path, value in changes:
        change = message.changes.add(path=path)
        if value is not None:
            change.new_value.CopyFrom(value)
    await service.runtime.bus.publish(topics.PROFILE_UPDATED, profile_id, message, f"{profile_id}:{version}")


async def members(stub, segment_id: str) -> list[str]:
    return sorted([m.profile_id async for m in stub.ListMembers(pb.ListMembersRequest(segment_id=segment_id))])


async def test_people_without_the_purpose_are_left_out_and_consent_changes_move_them(service, stub):
    transitions: list[segment_membership_pb2.SegmentMembershipChanged] = []

    async def on_message(msg) -> None:
        transitions.append(segment_membership_pb2.SegmentMembershipChanged.FromString(msg.data))

    await service.runtime.bus._nc.subscribe(topics.SEGMENT_MEMBERSHIP.wildcard, cb=on_message)
    answer = await stub.CreateSegment(tied("newsletter", 'traits.plan = "pro"'))
    assert answer.segment.purpose == "marketing" and answer.segment.definition == 'traits.plan = "pro"'
    pro = struct_pb2.Value(string_value="pro")
    ccpa = struct_pb2.Value(string_value="JURISDICTION_CCPA")
    await update(service, "gdpr-nobody", 1, ("traits.plan", pro))  # GDPR default: opt-in, not granted
    await update(service, "ccpa-nobody", 1, ("traits.plan", pro), ("jurisdiction", ccpa))  # opt-out default
    await update(service, "granted", 1, ("traits.plan", pro), ("consent.marketing", decision(True)))
    await eventually(lambda: _is(members(stub, "newsletter"), ["ccpa-nobody", "granted"]))
    await update(service, "gdpr-nobody", 2, ("consent.marketing", decision(True)))
    await update(service, "granted", 2, ("consent.marketing", decision(False)))
    await eventually(lambda: _is(members(stub, "newsletter"), ["ccpa-nobody", "gdpr-nobody"]))
    left = [t for t in transitions if t.profile_id == "granted"]
    assert [t.change for t in left] == [
        segment_membership_pb2.MEMBERSHIP_CHANGE_ENTERED,
        segment_membership_pb2.MEMBERSHIP_CHANGE_EXITED,
    ]
    assert left[-1].profile_version == 2  # the version that carried the withdrawal
    # A segment that is not tied to the purpose does not care.
    await stub.CreateSegment(
        pb.CreateSegmentRequest(
            segment=segment_pb2.Segment(segment_id="pros", name="pros", definition='traits.plan = "pro"')
        )
    )
    await eventually(lambda: _is(members(stub, "pros"), ["ccpa-nobody", "gdpr-nobody", "granted"]))
    # A segment created afterwards is backfilled with the same rule, over the view.
    await stub.CreateSegment(tied("later", "traits.plan exists"))
    await eventually(lambda: _is(members(stub, "later"), ["ccpa-nobody", "gdpr-nobody"]))
    # And a reference to a tied segment is tied too.
    await stub.CreateSegment(
        pb.CreateSegmentRequest(
            segment=segment_pb2.Segment(segment_id="fans", name="fans", definition='in segment "newsletter"')
        )
    )
    await eventually(lambda: _is(members(stub, "fans"), ["ccpa-nobody", "gdpr-nobody"]))
    estimate = await stub.Estimate(pb.EstimateRequest(definition='consent "marketing" and traits.plan = "pro"'))
    assert estimate.count == 2 and estimate.population == 3


async def _is(found, expected) -> bool:
    return await found == expected


async def test_a_purpose_the_deployment_does_not_have_is_refused_naming_the_field(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSegment(tied("x", "is known", purpose="telepathy"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violation(caught.value)
    assert found.field == "segment.purpose" and "configured purposes" in found.description
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSegment(tied("y", 'consent "telepathy"', purpose=""))
    assert violation(caught.value).field == "segment.definition"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSegment(tied("z", 'consent "Not A Name"', purpose=""))
    assert violation(caught.value).field == "segment.definition.consent.purpose"
