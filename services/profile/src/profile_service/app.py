"""The profile service: profiles, history and the event archive over gRPC;
events.resolved in, profile.updated out."""

from __future__ import annotations

from mosaic.archive.v1 import event_archive_service_pb2, event_archive_service_pb2_grpc
from mosaic.platform import topics
from mosaic.platform.privacy import Participant
from mosaic.platform.server import Runtime
from mosaic.profile.v1 import profile_service_pb2 as pb
from mosaic.profile.v1 import profile_service_pb2_grpc
from profile_service.cache import ProfileCache
from profile_service.config import Settings
from profile_service.events import ResolvedEventHandler
from profile_service.masking import MaskingProfileServicer
from profile_service.merges import MergeHandler
from profile_service.privacy import ProfilePrivacy
from profile_service.profiles import Profiles
from profile_service.server import ArchiveServicer, ProfileServicer
from profile_service.store import open_store


async def build(runtime: Runtime, settings: Settings) -> None:
    store = await open_store(settings.platform)
    runtime.cleanup.push_async_callback(store.close)
    cache = ProfileCache(settings.cache_size, settings.platform.partitions, settings.platform.owned_partitions)
    profiles = Profiles(store, cache, runtime.bus, settings)
    runtime.cleanup.push_async_callback(profiles.close)
    await profiles.definitions.all()
    servicer = MaskingProfileServicer(ProfileServicer(profiles), settings.platform.security.pii_traits)
    profile_service_pb2_grpc.add_ProfileServiceServicer_to_server(servicer, runtime.server)
    event_archive_service_pb2_grpc.add_EventArchiveServiceServicer_to_server(ArchiveServicer(profiles), runtime.server)
    runtime.add_service(pb.DESCRIPTOR.services_by_name["ProfileService"].full_name)
    runtime.add_service(event_archive_service_pb2.DESCRIPTOR.services_by_name["EventArchiveService"].full_name)
    owned = settings.platform.owned_partitions
    handler = ResolvedEventHandler(profiles)
    runtime.bus.consume(topics.EVENTS_RESOLVED, handler, owned, batch_handler=handler.batch)
    merges = MergeHandler(profiles)
    runtime.bus.consume(topics.IDENTITY_MERGED, merges.merged, owned)
    runtime.bus.consume(topics.IDENTITY_SPLIT, merges.split, owned)
    privacy = ProfilePrivacy(profiles)
    Participant("profile", runtime.bus, privacy.export, privacy.erase).start(owned)
