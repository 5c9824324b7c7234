"""The identity service: the graph over gRPC; events.raw in; events.resolved, identity.merged
and identity.split out."""

from __future__ import annotations

import asyncio

from identity_service.config import Settings
from identity_service.events import EventResolver, RawEventHandler
from identity_service.outbox import Outbox
from identity_service.privacy import IdentityPrivacy
from identity_service.resolver import Resolver, RootCache
from identity_service.rules import RulesCache
from identity_service.server import IdentityServicer
from identity_service.sightings import Sightings
from identity_service.store import IdentityStore, open_store
from mosaic.identity.v1 import identity_service_pb2 as pb
from mosaic.identity.v1 import identity_service_pb2_grpc
from mosaic.platform import topics
from mosaic.platform.privacy import Participant
from mosaic.platform.server import Runtime


def components(store: IdentityStore, settings: Settings) -> tuple[Resolver, RulesCache, EventResolver]:
    """The service's parts on one store; tests and the benchmark build them the same way."""
    resolver = Resolver(
        store, lease_seconds=settings.lease_seconds, root_cache=RootCache(max_age=settings.root_cache_seconds)
    )
    rules = RulesCache(store.load_rules, settings.rules_max_age)
    sightings = Sightings(store, settings.sightings_flush_seconds, erased=resolver.erased_profiles)
    return resolver, rules, EventResolver(resolver, rules, sightings, settings.phone_region)


async def build(runtime: Runtime, settings: Settings) -> None:
    store = await open_store(settings.platform)
    runtime.cleanup.push_async_callback(store.close)
    resolver, rules, events = components(store, settings)
    outbox = Outbox(store, runtime.bus, abandon_after=max(60.0, 4 * settings.lease_seconds))
    stopping = asyncio.Event()
    # Started after the consumers stop (cleanup runs then), both write a last time.
    background = [asyncio.create_task(outbox.run(stopping)), asyncio.create_task(events.sightings.run(stopping))]

    async def stop_background() -> None:
        stopping.set()
        await asyncio.gather(*background)

    runtime.cleanup.push_async_callback(stop_background)
    # Merges and splits made by other replicas move roots this replica may have cached.
    await runtime.bus.listen(topics.IDENTITY_MERGED, lambda m: resolver.root_cache.forget(m.merged_profile_ids))
    await runtime.bus.listen(
        topics.IDENTITY_SPLIT, lambda m: resolver.root_cache.forget([m.survivor_profile_id, *m.restored_profile_ids])
    )
    servicer = IdentityServicer(resolver, rules, events.sightings, outbox, settings.phone_region)
    identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(servicer, runtime.server)
    runtime.add_service(pb.DESCRIPTOR.services_by_name["IdentityService"].full_name)
    handler = RawEventHandler(events, runtime.bus, outbox)
    runtime.bus.consume(topics.EVENTS_RAW, handler, batch_handler=handler.batch)
    privacy = IdentityPrivacy(store, resolver, events.sightings)
    # Every replica forgets an erased person at once, whichever one's participant erases them,
    # and hears again those in flight when its connection comes back.
    await privacy.follow(runtime.bus)
    Participant("identity", runtime.bus, privacy.export, privacy.erase).start()
