"""Folding an event into a profile: pure logic, no I/O.

A trait keeps the value of the latest event time that set it; an older event arriving late
never overwrites a newer value (ties go to the later arrival). Every fold that changes
something yields the list of changed fields, which becomes the snapshot and the
`profile.updated` message.
"""

from __future__ import annotations

from google.protobuf import struct_pb2, timestamp_pb2

from mosaic.events.v1 import event_pb2
from mosaic.profile.v1 import profile_pb2


def _ts_key(ts: timestamp_pb2.Timestamp) -> tuple[int, int]:
    return ts.seconds, ts.nanos


def _number(value: int) -> struct_pb2.Value:
    return struct_pb2.Value(number_value=value)


def _time(ts: timestamp_pb2.Timestamp) -> struct_pb2.Value:
    return struct_pb2.Value(string_value=ts.ToJsonString())


def fold(profile: profile_pb2.Profile, event: event_pb2.Event) -> list[profile_pb2.FieldChange]:
    """Apply `event` to `profile` in place; returns what changed (empty when nothing did)."""
    changes: list[profile_pb2.FieldChange] = []
    when = event.timestamp if event.HasField("timestamp") else event.received_at

    for name, value in sorted(event.traits.fields.items()):
        current = profile.traits.get(name)
        if current is not None and _ts_key(current.set_at) > _ts_key(when):
            continue  # a newer event already set this trait
        if current is not None and current.value == value:
            current.set_at.CopyFrom(when)
            continue
        change = profile_pb2.FieldChange(path=f"traits.{name}", new_value=value)
        if current is not None:
            change.old_value.CopyFrom(current.value)
        changes.append(change)
        profile.traits[name].CopyFrom(profile_pb2.Trait(value=value, set_at=when, source_id=event.source_id))

    old_count = profile.event_count
    profile.event_count += 1
    changes.append(profile_pb2.FieldChange(path="event_count", old_value=_number(old_count) if old_count else None,
                                           new_value=_number(profile.event_count)))
    if not profile.HasField("first_seen") or _ts_key(when) < _ts_key(profile.first_seen):
        old = _time(profile.first_seen) if profile.HasField("first_seen") else None
        changes.append(profile_pb2.FieldChange(path="first_seen", old_value=old, new_value=_time(when)))
        profile.first_seen.CopyFrom(when)
    if not profile.HasField("last_seen") or _ts_key(when) > _ts_key(profile.last_seen):
        old = _time(profile.last_seen) if profile.HasField("last_seen") else None
        changes.append(profile_pb2.FieldChange(path="last_seen", old_value=old, new_value=_time(when)))
        profile.last_seen.CopyFrom(when)
    profile.version += 1
    return changes
