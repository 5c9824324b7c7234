"""Folding a resolved event into a profile: pure logic, no I/O.

A trait keeps the value of the latest event time that set it; an older event arriving late
never overwrites a newer value; at the same event time the source earlier in the configured
priority wins (ties between equal sources go to the later arrival). Identities, groups and
daily counters are kept alongside; `diff` (history.py) turns the before and after into the
snapshot's changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from google.protobuf import timestamp_pb2

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.profile.v1 import profile_pb2

T = event_pb2.EventType
TYPE_NAMES = {
    T.EVENT_TYPE_PAGE: "page",
    T.EVENT_TYPE_SCREEN: "screen",
    T.EVENT_TYPE_IDENTIFY: "identify",
    T.EVENT_TYPE_GROUP: "group",
    T.EVENT_TYPE_ALIAS: "alias",
}


@dataclass(frozen=True)
class FoldRules:
    source_priority: tuple[str, ...] = ()
    counter_days: int = 90

    def rank(self, source_id: str) -> int:
        """Lower is stronger; sources not named rank after every named one."""
        try:
            return self.source_priority.index(source_id)
        except ValueError:
            return len(self.source_priority)


def event_name(event: event_pb2.Event) -> str:
    return event.event if event.type == T.EVENT_TYPE_TRACK else TYPE_NAMES.get(event.type, "")


def event_key(event: event_pb2.Event) -> str:
    """What makes an event unique: its message id within its source (as at ingestion)."""
    return f"{event.source_id}:{event.message_id}" if event.source_id else event.message_id


def event_time(event: event_pb2.Event) -> timestamp_pb2.Timestamp:
    return event.timestamp if event.HasField("timestamp") else event.received_at


def _key(ts: timestamp_pb2.Timestamp) -> tuple[int, int]:
    return ts.seconds, ts.nanos


def revenue_of(event: event_pb2.Event) -> float:
    for name in ("revenue", "total"):
        value = event.properties.fields.get(name)
        if value is not None and value.WhichOneof("kind") == "number_value":
            return value.number_value
    return 0.0


def fold(profile: profile_pb2.Profile, resolved: resolved_pb2.ResolvedEvent, rules: FoldRules, now: datetime) -> None:
    """Apply one event to `profile` in place (the version is the caller's to bump)."""
    event = resolved.event
    when = event_time(event)
    _fold_traits(profile, event, when, rules)
    for identifier in resolved.identifiers:
        key = f"{identifier.type}:{identifier.value}"
        identity = profile.identities.get(key)
        if identity is None:
            profile.identities[key].CopyFrom(
                profile_pb2.Identity(
                    type=identifier.type,
                    value=identifier.value,
                    first_seen=when,
                    last_seen=when,
                    source_id=event.source_id,
                )
            )
            continue
        if _key(when) < _key(identity.first_seen):
            identity.first_seen.CopyFrom(when)
        if _key(when) > _key(identity.last_seen):
            identity.last_seen.CopyFrom(when)
    if event.type == T.EVENT_TYPE_GROUP and event.group_id:
        group = profile.groups.get(event.group_id)
        if group is None:
            profile.groups[event.group_id].CopyFrom(
                profile_pb2.GroupMembership(group_id=event.group_id, traits=event.traits, joined_at=when)
            )
        else:
            if _key(when) < _key(group.joined_at):
                group.joined_at.CopyFrom(when)
            group.traits.CopyFrom(event.traits)
    profile.event_count += 1
    if not profile.HasField("first_seen") or _key(when) < _key(profile.first_seen):
        profile.first_seen.CopyFrom(when)
    if not profile.HasField("last_seen") or _key(when) > _key(profile.last_seen):
        profile.last_seen.CopyFrom(when)
    _count(profile, event, when, rules, now)


def _fold_traits(profile, event, when, rules: FoldRules) -> None:
    for name, value in event.traits.fields.items():
        if event.type == T.EVENT_TYPE_GROUP:
            break  # group traits belong to the group, not the person
        current = profile.traits.get(name)
        if current is not None:
            if _key(current.set_at) > _key(when):
                continue  # a newer event already set this trait
            if _key(current.set_at) == _key(when) and rules.rank(current.source_id) < rules.rank(event.source_id):
                continue  # same moment, stronger source
        profile.traits[name].CopyFrom(profile_pb2.Trait(value=value, set_at=when, source_id=event.source_id))


def _count(profile, event, when, rules: FoldRules, now: datetime) -> None:
    name = event_name(event)
    day = when.ToDatetime(timezone.utc).strftime("%Y-%m-%d")
    oldest = (now - timedelta(days=rules.counter_days - 1)).strftime("%Y-%m-%d")
    if name and day >= oldest:
        counter = profile.daily_counters[f"{day}|{name}"]
        counter.day, counter.event = day, name
        counter.count += 1
        counter.revenue += revenue_of(event)
    for key in [k for k in profile.daily_counters if k.split("|", 1)[0] < oldest]:
        del profile.daily_counters[key]
