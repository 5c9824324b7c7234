"""The profile service: GetProfile and ListSnapshots; events.resolved in, profile.updated out."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from mosaic.events.v1 import profile_updated_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.errors import InvalidArgument, NotFound
from mosaic.platform.server import Runtime
from mosaic.profile.v1 import profile_pb2, profile_service_pb2, profile_service_pb2_grpc
from opentelemetry import trace
from profile_service.config import Settings
from profile_service.fold import fold
from profile_service.store import ProfileStore, open_store


class ProfileServicer(profile_service_pb2_grpc.ProfileServiceServicer):
    def __init__(self, store: ProfileStore) -> None:
        self.store = store

    async def GetProfile(self, request, context):
        if not request.profile_id:
            raise InvalidArgument("profile_id", "is required")
        profile = await self.store.latest(request.profile_id)
        if profile is None:
            raise NotFound("profile", request.profile_id)
        return profile_service_pb2.GetProfileResponse(profile=profile)

    async def ListSnapshots(self, request, context):
        if not request.profile_id:
            raise InvalidArgument("profile_id", "is required")
        if request.page_size < 0:
            raise InvalidArgument("page_size", "must not be negative")
        size = min(request.page_size or 50, 500)
        if request.page_token:
            try:
                below = int(request.page_token)
            except ValueError:
                raise InvalidArgument("page_token", "is not a token this service issued") from None
        else:
            latest = await self.store.latest(request.profile_id)
            if latest is None:
                raise NotFound("profile", request.profile_id)
            below = latest.version + 1
        snapshots = await self.store.list_snapshots(request.profile_id, below, size)
        last = snapshots[-1].version if snapshots else 1
        token = str(last) if len(snapshots) == size and last > 1 else ""
        return profile_service_pb2.ListSnapshotsResponse(snapshots=snapshots, next_page_token=token)


class ResolvedEventHandler:
    """events.resolved → fold → snapshot → profile.updated, idempotent by message id."""

    def __init__(self, store: ProfileStore, bus: Bus) -> None:
        self.store = store
        self.bus = bus

    async def __call__(self, resolved: resolved_pb2.ResolvedEvent, delivery: Delivery) -> None:
        profile_id, event = resolved.profile_id, resolved.event
        if not profile_id:
            raise InvalidArgument("profile_id", "is required")
        applied = await self.store.applied_version(profile_id, event.message_id)
        if applied is not None:
            snapshot = await self.store.snapshot(profile_id, applied)
            latest = await self.store.latest(profile_id)
            if latest is None or latest.version < applied:
                await self.store.save(snapshot)  # a crash came between marker and latest
        else:
            profile = await self.store.latest(profile_id) or profile_pb2.Profile(profile_id=profile_id)
            changes = fold(profile, event)
            now = timestamp_pb2.Timestamp()
            now.GetCurrentTime()
            snapshot = profile_pb2.Snapshot(
                profile_id=profile_id, version=profile.version, recorded_at=now,
                changes=changes, cause_message_id=event.message_id, profile=profile,
            )
            await self.store.save(snapshot)
        trace.get_current_span().set_attributes(
            {"mosaic.profile.id": profile_id, "mosaic.profile.version": snapshot.version}
        )
        # Published again on redelivery too: a crash may have come before the first publish,
        # and the message id makes JetStream drop the copy.
        update = profile_updated_pb2.ProfileUpdated(
            profile_id=profile_id, version=snapshot.version, changes=snapshot.changes,
            cause_message_id=event.message_id, updated_at=snapshot.recorded_at,
        )
        for name, trait in snapshot.profile.traits.items():
            update.traits.fields[name].CopyFrom(trait.value)
        await self.bus.publish(topics.PROFILE_UPDATED, profile_id, update, f"{profile_id}:{snapshot.version}")


async def build(runtime: Runtime, settings: Settings) -> None:
    store = await open_store(settings.platform)
    runtime.cleanup.push_async_callback(store.close)
    profile_service_pb2_grpc.add_ProfileServiceServicer_to_server(ProfileServicer(store), runtime.server)
    runtime.add_service(profile_service_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name)
    runtime.bus.consume(topics.EVENTS_RESOLVED, ResolvedEventHandler(store, runtime.bus), settings.platform.owned_partitions)
