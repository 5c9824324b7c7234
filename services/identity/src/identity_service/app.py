"""The identity service: Lookup and Resolve over gRPC; events.raw in, events.resolved out."""

from __future__ import annotations

from opentelemetry import trace

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from mosaic.platform import topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.errors import InvalidArgument, NotFound
from mosaic.platform.server import Runtime
from identity_service import identifiers
from identity_service.config import Settings
from identity_service.resolver import Resolver
from identity_service.store import open_store


class IdentityServicer(identity_service_pb2_grpc.IdentityServiceServicer):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def Lookup(self, request, context):
        identifier = _checked(request.identifier, "identifier")
        profile_id = await self.resolver.lookup(identifier)
        if profile_id is None:
            raise NotFound("identifier", f"{identifier.type}:{identifier.value}")
        return identity_service_pb2.LookupResponse(profile_id=profile_id)

    async def Resolve(self, request, context):
        matches = []
        for index, raw in enumerate(request.identifiers):
            identifier = _checked(raw, f"identifiers[{index}]")
            profile_id = await self.resolver.lookup(identifier)
            if profile_id:
                matches.append(identity_service_pb2.IdentifierMatch(identifier=identifier, profile_id=profile_id))
        return identity_service_pb2.ResolveResponse(matches=matches)


def _checked(identifier: identity_pb2.Identifier, field: str) -> identity_pb2.Identifier:
    if not identifier.type:
        raise InvalidArgument(f"{field}.type", "is required")
    value = identifiers.normalise(identifier.type, identifier.value)
    if not value:
        raise InvalidArgument(f"{field}.value", "is required")
    return identity_pb2.Identifier(type=identifier.type, value=value)


class RawEventHandler:
    """events.raw → resolve → events.resolved, keyed by profile id."""

    def __init__(self, resolver: Resolver, bus: Bus) -> None:
        self.resolver = resolver
        self.bus = bus

    async def __call__(self, event: event_pb2.Event, delivery: Delivery) -> None:
        found = identifiers.extract(event)
        if not found:
            raise InvalidArgument("event", "has no identifier (user_id, anonymous_id, email or device id)")
        profile_id = await self.resolver.resolve(found)
        trace.get_current_span().set_attribute("mosaic.profile.id", profile_id)
        resolved = resolved_pb2.ResolvedEvent(profile_id=profile_id, event=event, identifiers=found)
        await self.bus.publish(topics.EVENTS_RESOLVED, profile_id, resolved, event.message_id)


async def build(runtime: Runtime, settings: Settings) -> None:
    store = await open_store(settings.platform)
    runtime.cleanup.push_async_callback(store.close)
    resolver = Resolver(store)
    identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(IdentityServicer(resolver), runtime.server)
    runtime.add_service(identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name)
    runtime.bus.consume(topics.EVENTS_RAW, RawEventHandler(resolver, runtime.bus), settings.platform.owned_partitions)
