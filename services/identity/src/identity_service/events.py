"""One event through identity: its identifiers, its profile, and what is recorded about it;
RawEventHandler is the consumer of `events.raw` that runs it and publishes the outcome.

Besides the graph change itself (resolver), each event leaves: the identifiers it could not
link and why (for ExplainProfile), the last sighting of each identifier and its link (the
identifiers it carried, for the rule dry-run; see sightings). All are keyed by the event id
or the identifier, so a replay rewrites them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from opentelemetry import trace

from identity_service import identifiers as ids
from identity_service.outbox import Outbox
from identity_service.resolver import Erased, Resolution, Resolver, now_ms
from identity_service.rules import Rules, RulesCache
from identity_service.sightings import Sightings
from identity_service.store import Link
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.errors import InvalidArgument

log = logging.getLogger("identity.events")


@dataclass
class Resolved:
    profile_id: str
    identifiers: list[identity_pb2.Identifier]
    resolution: Resolution


class EventResolver:
    def __init__(self, resolver: Resolver, rules: RulesCache, sightings: Sightings, phone_region: str = "US") -> None:
        self.resolver = resolver
        self.rules = rules
        self.sightings = sightings
        self.phone_region = phone_region

    async def resolve(self, event: event_pb2.Event) -> Resolved:
        rules = await self.rules.get()
        usable, rejected = ids.extract(event, rules, self.phone_region)
        rule = ""
        if event.type == event_pb2.EVENT_TYPE_ALIAS and event.previous_id:
            previous = await self._previous(event.previous_id, rules)
            if previous is not None and (previous.type, previous.value) not in {ids.key(i) for i in usable}:
                usable = ids.ordered([*usable, previous], rules)
                rule = "alias"
        if not usable:
            reasons = "; ".join(f"{r.identifier.type}: {r.reason}" for r in rejected) or "none carried"
            raise InvalidArgument("event", f"has no usable identifier ({reasons})")
        at = _event_time(event)
        resolution = await self.resolver.resolve(
            usable,
            rules,
            event_id=event.message_id,
            at=at,
            source=event.source_id,
            rule=rule,
        )
        await self._record(event, at, usable, rejected, resolution)
        return Resolved(resolution.profile_id, usable, resolution)

    async def _previous(self, previous_id: str, rules: Rules) -> identity_pb2.Identifier | None:
        """Alias: the previous id is a user id if one is known by that value, else an anonymous id."""
        for id_type in ("user_id", "anonymous_id"):
            if rules.blocked_reason(id_type, previous_id.strip()):
                return None
            if await self.resolver.lookup((id_type, previous_id.strip())):
                return identity_pb2.Identifier(type=id_type, value=previous_id.strip())
        return identity_pb2.Identifier(type="anonymous_id", value=previous_id.strip())

    async def _record(self, event, at, usable, rejected, resolution: Resolution) -> None:
        store = self.resolver.store
        unlinked = [
            identity_pb2.Unlinked(
                identifier=r.identifier, profile_id=resolution.profile_id, reason=r.reason, event_id=event.message_id
            )
            for r in rejected
        ]
        plan = resolution.plan
        left_out: set[tuple[str, str]] = set()
        if plan is not None:
            for identifier, reason, other in plan.unlinked:
                left_out.add(ids.key(identifier))
                unlinked.append(
                    identity_pb2.Unlinked(
                        identifier=identifier,
                        profile_id=resolution.profile_id,
                        reason=reason,
                        event_id=event.message_id,
                        other_profile_id=other,
                    )
                )
        if unlinked:
            await store.save_unlinked(unlinked)
        # A lone identifier already known links nothing under any rules: not worth a record.
        changed = plan is not None and plan.changes_graph
        if len(usable) > 1 or changed:
            self.sightings.link(Link(at, event.message_id, tuple(ids.key(i) for i in usable)), changed)
        self.sightings.seen(
            {key: home for key in map(ids.key, usable) if key not in left_out and (home := self.resolver.home_of(key))},
            at,
        )


def _event_time(event: event_pb2.Event) -> int:
    for stamp in (event.timestamp, event.received_at):
        if stamp.seconds or stamp.nanos:
            return stamp.ToMilliseconds()
    return now_ms()


class RawEventHandler:
    """events.raw → resolve → events.resolved (keyed by profile id), then merges published; a
    fetched batch at once (`batch`: one publish for all), or one event at a time when the bus
    falls back to that. An event that would claim an identifier of an erased person is dropped
    and securely deleted from events.raw (see erasures)."""

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
        erased: list[int] = []

        async def resolve_in_order(indexes: list[int]) -> None:
            for index in indexes:
                try:
                    found[index] = await self.events.resolve(items[index][0])
                except Erased:
                    erased.append(index)

        await asyncio.gather(*(resolve_in_order(indexes) for indexes in by_key.values()))
        await self.events.sightings.write_owed()
        if any(r.resolution.merges for r in found if r is not None):
            # identity.merged goes out before the events that caused it, so the profile service
            # folds the merged profiles first; a crash here leaves it in the outbox.
            await self.outbox.drain()
        kept = [(event, delivery, r) for (event, delivery), r in zip(items, found, strict=True) if r is not None]
        contexts = [delivery.trace_context for _, delivery, _ in kept]
        messages = []
        for (event, _, r), context in zip(kept, contexts, strict=True):
            trace.get_current_span(context).set_attribute("mosaic.profile.id", r.profile_id)
            message = resolved_pb2.ResolvedEvent(profile_id=r.profile_id, event=event, identifiers=r.identifiers)
            messages.append((r.profile_id, message.SerializeToString(), event.message_id))
        if messages:
            await self.bus.publish_many(
                topics.EVENTS_RESOLVED, messages, contexts=contexts if any(c is not None for c in contexts) else None
            )
        for index in erased:
            # An event of an erased person, dropped: nor is it left in the stream naming them
            # (only this message: others of its key may be someone else's, waiting their turn).
            delivery = items[index][1]
            trace.get_current_span(delivery.trace_context).add_event("event of an erased person dropped")
            await self.bus.erase(topics.EVENTS_RAW, delivery.stream_sequence)
        if erased:
            log.info("dropped events of erased people", extra={"fields": {"events": len(erased)}})
