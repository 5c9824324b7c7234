"""One event through identity: its identifiers, its profile, and what is recorded about it.

Besides the graph change itself (resolver), each event leaves: the identifiers it could not
link and why (for ExplainProfile), the last sighting of each identifier and its link (the
identifiers it carried, for the rule dry-run; see sightings). All are keyed by the event id
or the identifier, so a replay rewrites them.
"""

from __future__ import annotations

from dataclasses import dataclass

from identity_service import identifiers as ids
from identity_service.resolver import Resolution, Resolver, now_ms
from identity_service.rules import Rules, RulesCache
from identity_service.sightings import Sightings
from identity_service.store import Link
from mosaic.events.v1 import event_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform.errors import InvalidArgument


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
            await self.sightings.link(Link(at, event.message_id, tuple(ids.key(i) for i in usable)), changed)
        self.sightings.seen(
            {key: home for key in map(ids.key, usable) if key not in left_out and (home := self.resolver.home_of(key))},
            at,
        )


def _event_time(event: event_pb2.Event) -> int:
    for stamp in (event.timestamp, event.received_at):
        if stamp.seconds or stamp.nanos:
            return stamp.ToMilliseconds()
    return now_ms()
