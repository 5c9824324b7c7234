"""Folding a resolved event into a profile: pure logic, no I/O.

A trait keeps the value of the latest event time that set it; an older event arriving late
never overwrites a newer value; at the same event time the source earlier in the configured
priority wins (ties between equal sources go to the later arrival). Identities, groups and
daily counters are kept alongside; `diff` (history.py) turns the before and after into the
snapshot's changes. A fold can record what it writes (`Edits`): the paths, and each entry as
it was, so the snapshot's changes come from those few entries rather than a walk of the whole
profile (months of counters, every trait).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

from google.protobuf import timestamp_pb2

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.profile.v1 import profile_pb2

# Plain ints: an enum wrapper's attribute costs a Python call, and these are read per event.
TRACK = event_pb2.EVENT_TYPE_TRACK
GROUP = event_pb2.EVENT_TYPE_GROUP
TYPE_NAMES = {
    event_pb2.EVENT_TYPE_PAGE: "page",
    event_pb2.EVENT_TYPE_SCREEN: "screen",
    event_pb2.EVENT_TYPE_IDENTIFY: "identify",
    GROUP: "group",
    event_pb2.EVENT_TYPE_ALIAS: "alias",
}
EPOCH = date(1970, 1, 1)


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


class Edits:
    """What folds into one profile wrote: the keys of each map, and in `before` each entry as it
    was before the first write to it (a key written but not in `before` was new), with the
    scalars as they were. `history.diff(edits.before, profile, edits.paths)` then gives what a
    diff of the whole profiles gives."""

    def __init__(self, profile: profile_pb2.Profile) -> None:
        self.before = profile_pb2.Profile(
            profile_id=profile.profile_id,
            version=profile.version,
            event_count=profile.event_count,
            jurisdiction=profile.jurisdiction,
        )
        for name in ("first_seen", "last_seen"):
            if profile.HasField(name):
                getattr(self.before, name).CopyFrom(getattr(profile, name))
        self.paths: dict[str, set[str]] = {}

    def entry(self, field: str, key: str, current) -> None:
        """About to write `field[key]`, whose entry is `current` (None: there is none)."""
        keys = self.paths.setdefault(field, set())
        if key not in keys:
            keys.add(key)
            if current is not None:
                getattr(self.before, field)[key].CopyFrom(current)

    def added(self, field: str) -> list[str]:
        """The keys of `field` that the folds created."""
        before = getattr(self.before, field)
        return [key for key in self.paths.get(field, ()) if key not in before]


class _Unrecorded(Edits):
    """For a fold whose caller diffs whole profiles."""

    def __init__(self) -> None:
        pass

    def entry(self, field: str, key: str, current) -> None:
        pass


UNRECORDED = _Unrecorded()


@lru_cache(maxsize=4096)
def day_text(days: int) -> str:
    """`YYYY-MM-DD` of a day since 1970-01-01, formatted once (strftime took ~3 % of profile's
    CPU when every snapshot and archived event called it)."""
    return (EPOCH + timedelta(days=days)).strftime("%Y-%m-%d")


@lru_cache(maxsize=4096)
def epoch_day(day: str) -> int:
    """Days since 1970-01-01 of a `YYYY-MM-DD` counter day (the inverse of `day_of`'s)."""
    return (date.fromisoformat(day) - EPOCH).days


def day_of(ts: timestamp_pb2.Timestamp) -> str:
    """The UTC day of a timestamp, `YYYY-MM-DD`."""
    return day_text(ts.seconds // 86400)


def oldest_day(now: datetime, days: int) -> str:
    """The first day a window of `days` days ending today (UTC) holds."""
    return day_text(int(now.timestamp()) // 86400 - (days - 1))


def event_name(event: event_pb2.Event) -> str:
    return event.event if event.type == TRACK else TYPE_NAMES.get(event.type, "")


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


def fold(
    profile: profile_pb2.Profile,
    resolved: resolved_pb2.ResolvedEvent,
    rules: FoldRules,
    now: datetime,
    edits: Edits = UNRECORDED,
    prune: bool = True,
) -> None:
    """Apply one event to `profile` in place (the version is the caller's to bump), recording
    what it writes in `edits`. `prune=False` leaves counters past the retention alone (the
    caller knows none are there: it pruned today already)."""
    event = resolved.event
    when = event_time(event)
    _fold_traits(profile, event, when, rules, edits)
    for identifier in resolved.identifiers:
        key = f"{identifier.type}:{identifier.value}"
        identity = profile.identities.get(key)
        if identity is None:
            edits.entry("identities", key, None)
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
        earlier, later = _key(when) < _key(identity.first_seen), _key(when) > _key(identity.last_seen)
        if earlier or later:
            edits.entry("identities", key, identity)
        if earlier:
            identity.first_seen.CopyFrom(when)
        if later:
            identity.last_seen.CopyFrom(when)
    if event.type == GROUP and event.group_id:
        group = profile.groups.get(event.group_id)
        edits.entry("groups", event.group_id, group)
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
    oldest = oldest_day(now, rules.counter_days)
    _count(profile, event, when, oldest, edits)
    if prune:
        prune_counters(profile, oldest, edits)


def _fold_traits(profile, event, when, rules: FoldRules, edits: Edits) -> None:
    if event.type == GROUP:
        return  # group traits belong to the group, not the person
    for name, value in event.traits.fields.items():
        current = profile.traits.get(name)
        if current is not None:
            if _key(current.set_at) > _key(when):
                continue  # a newer event already set this trait
            if _key(current.set_at) == _key(when) and rules.rank(current.source_id) < rules.rank(event.source_id):
                continue  # same moment, stronger source
        edits.entry("traits", name, current)
        profile.traits[name].CopyFrom(profile_pb2.Trait(value=value, set_at=when, source_id=event.source_id))


def _count(profile, event, when, oldest: str, edits: Edits) -> None:
    name = event_name(event)
    day = day_of(when)
    if name and day >= oldest:
        key = f"{day}|{name}"
        counters = profile.daily_counters
        edits.entry("daily_counters", key, counters.get(key))
        counter = counters[key]
        counter.day, counter.event = day, name
        counter.count += 1
        counter.revenue += revenue_of(event)


def prune_counters(profile: profile_pb2.Profile, oldest: str, edits: Edits = UNRECORDED) -> None:
    """Drop the counters of days before `oldest` (a key starts with its day, so it sorts by it)."""
    counters = profile.daily_counters
    for key in [k for k in counters if k < oldest]:
        edits.entry("daily_counters", key, counters[key])
        del counters[key]
