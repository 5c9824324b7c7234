"""Profile history as changes, and the delta scheme that stores it. Pure logic.

`diff(old, new)` lists what differs between two profiles as FieldChanges; it makes the
snapshot of every change and answers DiffSnapshots. Snapshots store the whole profile every
`full_every` versions and, in between, only the entries that changed (`delta`); `replay`
rebuilds any version from the nearest full state below it plus the deltas after it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from mosaic.consent.v1 import consent_pb2
from mosaic.platform.consent import effective_change
from mosaic.profile.v1 import profile_pb2

MAPS = ("traits", "identities", "groups", "computed_traits", "daily_counters", "daily_series", "consent")
# A plain enum, not a message: "unset" is its zero value.
JURISDICTION = "jurisdiction"
CHANGES: dict[int, str] = {
    consent_pb2.CONSENT_CHANGE_GRANT: "grant",
    consent_pb2.CONSENT_CHANGE_DENY: "deny",
    consent_pb2.CONSENT_CHANGE_WITHDRAW: "withdraw",
    consent_pb2.CONSENT_CHANGE_EXPIRE: "expire",
}


EPOCH = datetime(1970, 1, 1)  # naive, as ToJsonString's (UTC)


def timestamp_text(moment: timestamp_pb2.Timestamp) -> str:
    """Timestamp.ToJsonString's text (RFC 3339 in UTC, 0, 3, 6 or 9 digits of fraction), its
    minute formatted once: ToJsonString took ~2 us, and every event's change gives two
    (last_seen's old and new values)."""
    minute, second = divmod(moment.seconds, 60)
    text = f"{_minute_text(minute)}:{second:02d}"
    nanos = moment.nanos
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{text}.{nanos // 1000:06d}Z"
    return f"{text}.{nanos:09d}Z"


@functools.lru_cache(maxsize=4096)
def _minute_text(minute: int) -> str:
    return (EPOCH + timedelta(minutes=minute)).isoformat()[:16]  # 2026-12-08T04:40


def consent_value(decision: consent_pb2.ConsentDecision) -> struct_pb2.Value:
    """A consent decision as a change shows it (what segmentation reads from profile.updated)."""
    value = struct_pb2.Value()
    fields: dict[str, Any] = {
        "granted": decision.granted,
        "change": CHANGES[effective_change(decision)],
        "decided_at": timestamp_text(decision.decided_at),
        "source": decision.source,
    }
    if decision.HasField("expires_at"):
        fields["expires_at"] = timestamp_text(decision.expires_at)
    value.struct_value.update(fields)
    return value


def _value(field: str, entry) -> struct_pb2.Value:
    """The value a change shows for one map entry."""
    if field == "traits":
        return entry.value
    if field == "computed_traits":
        return entry
    if field == "identities":
        return struct_pb2.Value(string_value=entry.value)
    if field == "groups":
        return struct_pb2.Value(struct_value=entry.traits)
    if field == "daily_counters":
        return struct_pb2.Value(number_value=entry.count)
    if field == "daily_series":
        value = struct_pb2.Value()
        parts = value.struct_value.fields
        parts["count"].number_value = entry.count
        parts["sum"].number_value = entry.sum
        parts["min"].number_value = entry.min
        parts["max"].number_value = entry.max
        return value
    return consent_value(entry)


def diff(
    old: profile_pb2.Profile, new: profile_pb2.Profile, paths: Mapping[str, Iterable[str]] | None = None
) -> list[profile_pb2.FieldChange]:
    """What differs from `old` to `new`, map entries by key in order, then the scalars. With
    `paths` (fold.Edits), only those keys of the maps are compared: the rest are the same."""
    changes = []
    for field in MAPS:
        if paths is not None and field not in paths:
            continue
        before, after = getattr(old, field), getattr(new, field)
        for key in sorted(paths[field] if paths is not None else set(before) | set(after)):
            if key in before and key in after and before[key] == after[key]:
                continue
            change = profile_pb2.FieldChange(path=f"{field}.{key}")
            if key in before:
                change.old_value.CopyFrom(_value(field, before[key]))
            if key in after:
                change.new_value.CopyFrom(_value(field, after[key]))
            changes.append(change)
    if old.event_count != new.event_count:
        change = profile_pb2.FieldChange(path="event_count")
        if old.event_count:
            change.old_value.number_value = old.event_count
        change.new_value.number_value = new.event_count
        changes.append(change)
    for field in ("first_seen", "last_seen"):
        has_old, has_new = old.HasField(field), new.HasField(field)
        before, after = getattr(old, field), getattr(new, field)
        if has_old == has_new and (before.seconds, before.nanos) == (after.seconds, after.nanos):
            continue
        change = profile_pb2.FieldChange(path=field)
        if has_old:
            change.old_value.string_value = timestamp_text(before)
        if has_new:
            change.new_value.string_value = timestamp_text(after)
        changes.append(change)
    if old.jurisdiction != new.jurisdiction:
        change = profile_pb2.FieldChange(path=JURISDICTION)
        for value, jurisdiction in ((change.old_value, old.jurisdiction), (change.new_value, new.jurisdiction)):
            if jurisdiction:
                value.string_value = consent_pb2.Jurisdiction.Name(jurisdiction)
        changes.append(change)
    return changes


def delta(new: profile_pb2.Profile, changes: list[profile_pb2.FieldChange]) -> profile_pb2.Profile:
    """The part of `new` that `changes` touched: what a delta snapshot stores."""
    part = profile_pb2.Profile(profile_id=new.profile_id, version=new.version)
    for change in changes:
        field, _, key = change.path.partition(".")
        if field in MAPS:
            source = getattr(new, field)
            if key in source:
                getattr(part, field)[key].CopyFrom(source[key])
        elif field == "event_count":
            part.event_count = new.event_count
        elif field == JURISDICTION:
            part.jurisdiction = new.jurisdiction
        elif new.HasField(field):
            getattr(part, field).CopyFrom(getattr(new, field))
    return part


def apply(profile: profile_pb2.Profile, snapshot: profile_pb2.Snapshot) -> None:
    """Move `profile` forward by one delta snapshot, in place."""
    part = snapshot.profile
    for change in snapshot.changes:
        field, _, key = change.path.partition(".")
        if field in MAPS:
            target = getattr(profile, field)
            if change.HasField("new_value"):
                target[key].CopyFrom(getattr(part, field)[key])
            else:
                del target[key]
        elif field == "event_count":
            profile.event_count = part.event_count
        elif field == JURISDICTION:
            profile.jurisdiction = part.jurisdiction
        elif change.HasField("new_value"):
            getattr(profile, field).CopyFrom(getattr(part, field))
        else:
            profile.ClearField(field)
    profile.version = snapshot.version


def replay(snapshots: list[profile_pb2.Snapshot], full: list[bool]) -> profile_pb2.Profile:
    """The profile as of the last snapshot; the first must be a full one."""
    if not snapshots or not full[0]:
        raise ValueError("replay needs a full snapshot first")
    profile = profile_pb2.Profile()
    profile.CopyFrom(snapshots[0].profile)
    for snapshot, is_full in zip(snapshots[1:], full[1:], strict=False):
        if is_full:
            profile.CopyFrom(snapshot.profile)
        else:
            apply(profile, snapshot)
    return profile
