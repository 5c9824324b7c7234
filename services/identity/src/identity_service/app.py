"""The identity service: the graph over gRPC; events.raw in; events.resolved, identity.merged
and identity.split out."""

from __future__ import annotations

import asyncio

from opentelemetry import trace

from identity_service import admin, dryrun, explain, identifiers
from identity_service.config import Settings
from identity_service.events import EventResolver, Resolved
from identity_service.outbox import Outbox
from identity_service.privacy import IdentityPrivacy
from identity_service.resolver import Resolver, RootCache
from identity_service.rules import Rules, RulesCache, with_defaults
from identity_service.sightings import Sightings
from identity_service.store import IdentityStore, open_store
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2, identity_service_pb2_grpc
from mosaic.identity.v1 import identity_service_pb2 as pb
from mosaic.platform import limits, topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.errors import FailedPrecondition, InvalidArgument, NotFound
from mosaic.platform.privacy import Participant
from mosaic.platform.server import Runtime

# Bounds of the work one call may ask for.
MAX_RESOLVE = 1000
MAX_MERGE = 100
MAX_REASON = 1000
MAX_DRY_RUN_LINKS = dryrun.DEFAULT_MAX_LINKS


class IdentityServicer(identity_service_pb2_grpc.IdentityServiceServicer):
    def __init__(
        self, resolver: Resolver, rules: RulesCache, sightings: Sightings, outbox: Outbox, phone_region: str
    ) -> None:
        self.resolver = resolver
        self.rules = rules
        self.sightings = sightings
        self.outbox = outbox
        self.phone_region = phone_region

    async def Lookup(self, request, context):
        identifier = self._checked(request.identifier, "identifier")
        profile_id = await self.resolver.lookup(identifiers.key(identifier))
        if profile_id is None:
            raise NotFound("identifier", f"{identifier.type}:{identifier.value}")
        return pb.LookupResponse(profile_id=profile_id)

    async def Resolve(self, request, context):
        if len(request.identifiers) > MAX_RESOLVE:
            raise InvalidArgument(
                "identifiers", f"must hold at most {MAX_RESOLVE} identifiers, holds {len(request.identifiers)}"
            )
        checked = [self._checked(raw, f"identifiers[{i}]") for i, raw in enumerate(request.identifiers)]
        found = await asyncio.gather(*(self.resolver.lookup(identifiers.key(i)) for i in checked))
        return pb.ResolveResponse(
            matches=[
                pb.IdentifierMatch(identifier=identifier, profile_id=profile_id)
                for identifier, profile_id in zip(checked, found, strict=False)
                if profile_id
            ]
        )

    async def GetIdentities(self, request, context):
        limits.check_required_text("profile_id", request.profile_id)
        root = await explain.survivor_of(self.resolver, request.profile_id)
        await self.sightings.flush()  # this replica's latest sightings (others' within a flush interval)
        return pb.GetIdentitiesResponse(profile_id=root, identities=await explain.identities(self.resolver, root))

    async def GetMergeHistory(self, request, context):
        limits.check_required_text("profile_id", request.profile_id)
        await explain.survivor_of(self.resolver, request.profile_id)
        return pb.GetMergeHistoryResponse(merges=await explain.history(self.resolver, request.profile_id))

    async def ExplainProfile(self, request, context):
        limits.check_required_text("profile_id", request.profile_id)
        root = await explain.survivor_of(self.resolver, request.profile_id)
        return await explain.explain(self.resolver, root)

    async def SplitProfile(self, request, context):
        limits.check_required_text("merge_id", request.merge_id)
        limits.check_text("reason", request.reason, MAX_REASON)
        split = await admin.split(self.resolver, request.merge_id, request.reason)
        await self.outbox.drain()
        return pb.SplitProfileResponse(
            split_id=split.split_id,
            survivor_profile_id=split.survivor_profile_id,
            restored_profile_ids=split.restored_profile_ids,
            moved_identifiers=split.moved_identifiers,
        )

    async def MergeProfiles(self, request, context):
        if len(request.profile_ids) > MAX_MERGE:
            raise InvalidArgument(
                "profile_ids", f"must name at most {MAX_MERGE} profiles, names {len(request.profile_ids)}"
            )
        for index, profile_id in enumerate(request.profile_ids):
            limits.check_required_text(f"profile_ids[{index}]", profile_id)
        limits.check_text("reason", request.reason, MAX_REASON)
        limits.check_text("request_id", request.request_id)
        survivor, records = await admin.merge_profiles(
            self.resolver, list(request.profile_ids), await self.rules.get(), request.reason, request.request_id
        )
        await self.outbox.drain()
        return pb.MergeProfilesResponse(survivor_profile_id=survivor, merges=records)

    async def DryRunRules(self, request, context):
        if not 0 <= request.max_links <= MAX_DRY_RUN_LINKS:
            raise InvalidArgument("max_links", f"must be between 0 and {MAX_DRY_RUN_LINKS:,}")
        await self.sightings.flush()  # the links this replica still holds
        return await dryrun.dry_run(self.resolver, Rules.from_proto(request.rules), request.max_links)

    async def GetRules(self, request, context):
        stored = await self.resolver.store.load_rules() or identity_pb2.IdentityRules()
        return pb.GetRulesResponse(rules=with_defaults(stored))

    async def UpdateRules(self, request, context):
        Rules.from_proto(request.rules)  # names the field of a bad rule before anything is stored
        stored = await self.resolver.store.load_rules()
        version = stored.version if stored else 0
        if request.rules.version != version:
            raise FailedPrecondition(
                "rules", f"version {request.rules.version} is not the version in force ({version})"
            )
        new = identity_pb2.IdentityRules()
        new.CopyFrom(request.rules)
        new.version = version + 1
        if not await self.resolver.store.save_rules(new, version):
            raise FailedPrecondition("rules", "were changed meanwhile; read them again")
        self.rules.invalidate()
        return pb.UpdateRulesResponse(rules=with_defaults(new))

    def _checked(self, identifier: identity_pb2.Identifier, field: str) -> identity_pb2.Identifier:
        limits.check_required_text(f"{field}.type", identifier.type, limits.MAX_TYPE_LENGTH)
        limits.check_text(f"{field}.value", identifier.value)
        value = identifiers.normalise(identifier.type, identifier.value, self.phone_region)
        if not value:
            raise InvalidArgument(f"{field}.value", f"is not a valid {identifier.type}")
        return identity_pb2.Identifier(type=identifier.type, value=value)


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
