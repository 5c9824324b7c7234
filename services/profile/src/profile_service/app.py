"""The profile service: profiles, history and the event archive over gRPC;
events.resolved, identity changes and consent.changed in, profile.updated out."""

from __future__ import annotations

from mosaic.archive.v1 import event_archive_service_pb2, event_archive_service_pb2_grpc
from mosaic.platform import retention, topics
from mosaic.platform.privacy import Participant
from mosaic.platform.server import Runtime
from mosaic.profile.v1 import profile_service_pb2 as pb
from mosaic.profile.v1 import profile_service_pb2_grpc
from profile_service.cache import ProfileCache
from profile_service.config import Settings
from profile_service.consent import ConsentChanges
from profile_service.events import ResolvedEventHandler
from profile_service.masking import MaskingProfileServicer
from profile_service.merges import MergeHandler
from profile_service.privacy import ProfilePrivacy
from profile_service.profiles import Profiles
from profile_service.server import ArchiveServicer, ProfileServicer
from profile_service.store import open_store


async def build(runtime: Runtime, settings: Settings) -> None:
    store = await open_store(settings.platform, snapshot_ttl=int(settings.snapshot_days * 86400))
    runtime.cleanup.push_async_callback(store.close)
    embedded = settings.platform.store != "cassandra"
    kept = retention.Retention(
        "profile",
        settings.platform.store,
        settings.retention_kinds(),
        # The embedded store sweeps what expired; Cassandra drops it by TTL.
        getattr(store, "sweep", None) if embedded else None,
        settings.sweep_seconds,
    )
    retention.serve(runtime, kept)
    cache = ProfileCache(settings.cache_size, settings.platform.partitions)
    runtime.ownership.follow(acquired=cache.own, released=cache.disown)
    profiles = Profiles(store, cache, runtime.bus, settings)
    runtime.cleanup.push_async_callback(profiles.close)
    await profiles.definitions.all()
    backfiller = profiles.start_backfills(runtime.ownership)
    runtime.ownership.follow(acquired=backfiller.acquired, released=backfiller.released)
    servicer = MaskingProfileServicer(ProfileServicer(profiles), settings.platform.security.pii_traits)
    profile_service_pb2_grpc.add_ProfileServiceServicer_to_server(servicer, runtime.server)
    event_archive_service_pb2_grpc.add_EventArchiveServiceServicer_to_server(ArchiveServicer(profiles), runtime.server)
    runtime.add_service(pb.DESCRIPTOR.services_by_name["ProfileService"].full_name)
    runtime.add_service(event_archive_service_pb2.DESCRIPTOR.services_by_name["EventArchiveService"].full_name)
    handler = ResolvedEventHandler(profiles)
    runtime.bus.consume(topics.EVENTS_RESOLVED, handler, batch_handler=handler.batch)
    merges = MergeHandler(profiles)
    runtime.bus.consume(topics.IDENTITY_MERGED, merges.merged)
    runtime.bus.consume(topics.IDENTITY_SPLIT, merges.split)
    runtime.bus.consume(topics.CONSENT_CHANGED, ConsentChanges(profiles))
    privacy = ProfilePrivacy(profiles)
    Participant("profile", runtime.bus, privacy.export, privacy.erase).start()
