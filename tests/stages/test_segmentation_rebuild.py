"""Segmentation deployed after the profiles exist, once their profile.updated notices have left
the stream (the embedded store, one real nats-server): its view is rebuilt from the profile
service's ScanProfiles, a page at a time, and an Estimate counts everyone right away."""

from __future__ import annotations

import grpc
import nats

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.profile.v1 import profile_service_pb2, profile_service_pb2_grpc
from mosaic.segmentation.v1 import segmentation_service_pb2, segmentation_service_pb2_grpc
from mosaic.testing.plugin import eventually

PEOPLE = 1234  # more than two of the rebuild's pages
PRO = {f"p-{i:04d}" for i in range(PEOPLE) if i % 3 == 0}


async def test_a_segmentation_started_late_rebuilds_its_view_from_the_profile_service(start_services):
    mesh = await start_services("profile")
    bus = mesh.services["profile"].runtime.bus
    for i in range(PEOPLE):
        profile_id = f"p-{i:04d}"
        event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id=profile_id, message_id=f"m-{i}")
        event.timestamp.GetCurrentTime()
        event.traits.update({"plan": "pro" if profile_id in PRO else "free"})
        resolved = resolved_pb2.ResolvedEvent(profile_id=profile_id, event=event)
        await bus.publish(topics.EVENTS_RESOLVED, profile_id, resolved, f"m-{i}")
    async with grpc.aio.insecure_channel(mesh.address("profile")) as channel:
        profiles = profile_service_pb2_grpc.ProfileServiceStub(channel)

        async def scanned() -> int:
            request = profile_service_pb2.ScanProfilesRequest(page_size=1000)
            return sum([len(r.profiles) async for r in profiles.ScanProfiles(request)])

        await eventually(lambda: _equal(scanned(), PEOPLE), timeout=60)
    nc = await nats.connect(mesh.nats_url)
    try:  # what the stream's age does to the notices: only the rebuild can bring the profiles now
        await nc.jetstream().purge_stream(topics.PROFILE_UPDATED.stream)
    finally:
        await nc.close()

    await start_services("segmentation", MOSAIC_PROFILE_ADDRESS=mesh.address("profile"))
    async with grpc.aio.insecure_channel(mesh.address("segmentation")) as channel:
        segments = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)

        async def estimate():
            request = segmentation_service_pb2.EstimateRequest(definition='traits.plan = "pro"', sample_size=100)
            return await segments.Estimate(request)

        await eventually(lambda: _counted(estimate(), len(PRO)), timeout=60)
        answer = await estimate()
        assert answer.population == PEOPLE
        assert set(answer.sample) <= PRO and len(answer.sample) == 100


async def _equal(count, expected: int) -> bool:
    return await count == expected


async def _counted(answer, expected: int) -> bool:
    return (await answer).count == expected
