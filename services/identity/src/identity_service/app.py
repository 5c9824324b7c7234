"""The identity service: the graph over gRPC; events.raw in; events.resolved, identity.merged
and identity.split out."""

from __future__ import annotations

import asyncio

from opentelemetry import trace

from identity_service.config import Settings
from identity_service.events import EventResolver, Resolved
from identity_service.outbox import Outbox
from identity_service.privacy import IdentityPrivacy
from identity_service.resolver import Resolver, RootCache
from identity_service.rules import RulesCache
from identity_service.server import IdentityServicer
from identity_service.sightings import Sightings
from identity_service.store import IdentityStore, open_store
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.identity.v1 import identity_service_pb2 as pb
from mosaic.identity.v1 import identity_service_pb2_grpc
from mosaic.platform import topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.privacy import Participant
from mosaic.platform.server import Runtime


class RawEventHandler:
    """events.raw → resolve → events.resolved (keyed by profile id), then merges published; a
    fetched batch at once (`batch`: one publish for all), or one event at a time when the bus
    falls back to that."""

    def __init__(self, events: EventResolver, bus: Bus, outbox: Outbox) -> None:
        self.events = events
        self.bus = bus
        self.outbox = outbox

    async def __call__(self, event: event_pb2.Event, delivery: Delivery) -> None:
        await self.batch([(event, delivery)])

    async def batch(self, items: list[tuple[event_pb2.Event, Delivery]]) -> None:
        # Events of one key in order (the order they were sent in), different keys side by side.
        by_key: dict[str, list[int]] = {}
        for index, (_, delivery) in enumerate(items):
            by_key.setdefault(delivery.key, []).append(index)
        found: list[Resolved | None] = [None] * len(items)

        async def resolve_in_order(indexes: list[int]) -> None:
            for index in indexes:
                found[index] = await self.events.resolve(items[index][0])

        await asyncio.gather(*(resolve_in_order(indexes) for indexes in by_key.values()))
        resolved = [r for r in found if r is not None]
        if any(r.resolution.merges for r in resolved):
            # identity.merged goes out before the events that caused it, so the profile service
            # folds the merged profiles first; a crash here leaves it in the outbox.
            await self.outbox.drain()
        contexts = [delivery.trace_context for _, delivery in items]
        messages = []
        for (event, _), context, r in zip(items, contexts, resolved, strict=True):
            trace.get_current_span(context).set_attribute("mosaic.profile.id", r.profile_id)
            message = resolved_pb2.ResolvedEvent(profile_id=r.profile_id, event=event, identifiers=r.identifiers)
            messages.append((r.profile_id, message.SerializeToString(), event.message_id))
        await self.bus.publish_many(
            topics.EVENTS_RESOLVED, messages, contexts=contexts if any(c is not None for c in contexts) else None
        )


def components(store: IdentityStore, settings: Settings) -> tuple[Resolver, RulesCache, EventResolver]:
    """The service's parts on one store; tests and the benchmark build them the same way."""
    resolver = Resolver(
        store, lease_seconds=settings.lease_seconds, root_cache=RootCache(max_age=settings.root_cache_seconds)
    )
    rules = RulesCache(store.load_rules, settings.rules_max_age)
    sightings = Sightings(store, settings.sightings_flush_seconds)
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
    Participant("identity", runtime.bus, privacy.export, privacy.erase).start()
