"""The segmentation service: segments over gRPC; profile.updated in, segment.membership out."""

from __future__ import annotations

import asyncio
import time

from google.protobuf import timestamp_pb2
from opentelemetry import trace

from mosaic.events.v1 import profile_updated_pb2, segment_membership_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.errors import InvalidArgument, NotFound
from mosaic.platform.privacy import Participant
from mosaic.platform.server import Runtime
from mosaic.segmentation.v1 import segmentation_service_pb2, segmentation_service_pb2_grpc
from segmentation_service import conditions
from segmentation_service.config import Settings
from segmentation_service.privacy import SegmentationPrivacy
from segmentation_service.store import SegmentStore, open_store

Change = segment_membership_pb2.MembershipChange


class SegmentCatalog:
    """The segment definitions, cached; reloaded after a while so other replicas' creations show."""

    def __init__(self, store: SegmentStore, max_age: float = 5.0) -> None:
        self.store = store
        self.max_age = max_age
        self._segments: list = []
        self._loaded_at = -1e9
        self._lock = asyncio.Lock()

    async def all(self):
        async with self._lock:
            if time.monotonic() - self._loaded_at > self.max_age:
                self._segments = await self.store.segments()
                self._loaded_at = time.monotonic()
            return self._segments

    def invalidate(self) -> None:
        self._loaded_at = -1e9


class SegmentationServicer(segmentation_service_pb2_grpc.SegmentationServiceServicer):
    def __init__(self, store: SegmentStore, catalog: SegmentCatalog) -> None:
        self.store = store
        self.catalog = catalog

    async def CreateSegment(self, request, context):
        segment = request.segment
        if not conditions.SEGMENT_ID.match(segment.segment_id):
            raise InvalidArgument("segment.segment_id", "must be 1-64 lower-case letters, digits, - or _")
        if not segment.name:
            raise InvalidArgument("segment.name", "is required")
        conditions.validate(segment.condition)
        segment.created_at.GetCurrentTime()
        await self.store.create(segment)
        self.catalog.invalidate()
        return segmentation_service_pb2.CreateSegmentResponse(segment=segment)

    async def GetSegment(self, request, context):
        for segment in await self.store.segments():
            if segment.segment_id == request.segment_id:
                return segmentation_service_pb2.GetSegmentResponse(segment=segment)
        raise NotFound("segment", request.segment_id)

    async def ListSegments(self, request, context):
        return segmentation_service_pb2.ListSegmentsResponse(segments=await self.store.segments())

    async def IsMember(self, request, context):
        if not request.segment_id:
            raise InvalidArgument("segment_id", "is required")
        if not request.profile_id:
            raise InvalidArgument("profile_id", "is required")
        member, version = await self.store.membership(request.segment_id, request.profile_id)
        return segmentation_service_pb2.IsMemberResponse(member=member, profile_version=version)


class ProfileUpdatedHandler:
    """Re-evaluates only the segments that read a changed trait; publishes entries and exits."""

    def __init__(self, store: SegmentStore, catalog: SegmentCatalog, bus: Bus) -> None:
        self.store = store
        self.catalog = catalog
        self.bus = bus

    async def __call__(self, update: profile_updated_pb2.ProfileUpdated, delivery: Delivery) -> None:
        # Segments read traits and computed traits by name (profile.updated carries both).
        changed = {c.path.split(".", 1)[1] for c in update.changes if c.path.startswith(("traits.", "computed_traits."))}
        for segment in await self.catalog.all():
            if not changed & conditions.traits_read(segment.condition):
                continue
            member = conditions.matches(segment.condition, update.traits)
            was_member, decided_at = await self.store.membership(segment.segment_id, update.profile_id)
            if decided_at > update.version:
                continue  # a newer version was already evaluated
            if decided_at == update.version and was_member == member:
                await self._publish(segment.segment_id, update, member)  # redelivery: the publish may be missing
                continue
            if member == was_member:
                continue
            await self.store.set_membership(segment.segment_id, update.profile_id, member, update.version)
            await self._publish(segment.segment_id, update, member)

    async def _publish(self, segment_id: str, update, member: bool) -> None:
        trace.get_current_span().set_attribute("mosaic.segment.id", segment_id)
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        change = segment_membership_pb2.SegmentMembershipChanged(
            segment_id=segment_id, profile_id=update.profile_id,
            change=Change.MEMBERSHIP_CHANGE_ENTERED if member else Change.MEMBERSHIP_CHANGE_EXITED,
            profile_version=update.version, changed_at=now,
        )
        await self.bus.publish(
            topics.SEGMENT_MEMBERSHIP, update.profile_id, change, f"{segment_id}:{update.profile_id}:{update.version}"
        )


async def build(runtime: Runtime, settings: Settings) -> None:
    store = await open_store(settings.platform)
    runtime.cleanup.push_async_callback(store.close)
    catalog = SegmentCatalog(store)
    segmentation_service_pb2_grpc.add_SegmentationServiceServicer_to_server(
        SegmentationServicer(store, catalog), runtime.server
    )
    runtime.add_service(segmentation_service_pb2.DESCRIPTOR.services_by_name["SegmentationService"].full_name)
    runtime.bus.consume(
        topics.PROFILE_UPDATED, ProfileUpdatedHandler(store, catalog, runtime.bus), settings.platform.owned_partitions
    )
    privacy = SegmentationPrivacy(store)
    Participant("segmentation", runtime.bus, privacy.export, privacy.erase).start(settings.platform.owned_partitions)
