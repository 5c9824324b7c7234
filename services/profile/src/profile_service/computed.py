"""Computed traits: aggregations of a profile's events, all time or over a rolling window.

Each definition keeps a small partial per UTC day (or one for all time): count, sum, min, max,
first, last and value counts. A rolling window combines the partials of its last N days, so a
value is exact without rescanning events, and days that left the window are dropped. Pure
logic; the state is plain JSON kept beside the profile.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

from google.protobuf import json_format, struct_pb2

from mosaic.events.v1 import event_pb2
from mosaic.platform.errors import InvalidArgument
from mosaic.profile.v1 import profile_pb2
from profile_service.fold import UNRECORDED, Edits, day_of, event_name, event_time, oldest_day

A = profile_pb2.Aggregation
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
NEEDS_PROPERTY = {
    A.AGGREGATION_SUM,
    A.AGGREGATION_MIN,
    A.AGGREGATION_MAX,
    A.AGGREGATION_AVERAGE,
    A.AGGREGATION_FIRST,
    A.AGGREGATION_LAST,
    A.AGGREGATION_MOST_FREQUENT,
    A.AGGREGATION_DISTINCT_COUNT,
}
NUMERIC = {A.AGGREGATION_SUM, A.AGGREGATION_MIN, A.AGGREGATION_MAX, A.AGGREGATION_AVERAGE}
# Plain ints: an enum wrapper's attribute costs a Python call, and these are read per event.
COUNT, SUM, AVERAGE = A.AGGREGATION_COUNT, A.AGGREGATION_SUM, A.AGGREGATION_AVERAGE
MIN, MAX, FIRST, LAST = A.AGGREGATION_MIN, A.AGGREGATION_MAX, A.AGGREGATION_FIRST, A.AGGREGATION_LAST
DISTINCT = A.AGGREGATION_DISTINCT_COUNT
BY_VALUE = {A.AGGREGATION_MOST_FREQUENT, DISTINCT}
ALL_TIME = "all"
# A key of the states that is not a definition's (names start with a letter): kept by whoever
# folds, e.g. the day the counters were last pruned.
RESERVED = "$"

# Commerce traits every profile gets, from the Segment spec's `Order Completed`.
BUILT_IN = (
    profile_pb2.ComputedTraitDefinition(name="orders", aggregation=A.AGGREGATION_COUNT, event="Order Completed"),
    profile_pb2.ComputedTraitDefinition(
        name="lifetime_value", aggregation=A.AGGREGATION_SUM, event="Order Completed", property="revenue"
    ),
    profile_pb2.ComputedTraitDefinition(
        name="average_order_value", aggregation=A.AGGREGATION_AVERAGE, event="Order Completed", property="revenue"
    ),
    profile_pb2.ComputedTraitDefinition(
        name="first_order_at", aggregation=A.AGGREGATION_FIRST, event="Order Completed", property="$timestamp"
    ),
    profile_pb2.ComputedTraitDefinition(
        name="last_order_at", aggregation=A.AGGREGATION_LAST, event="Order Completed", property="$timestamp"
    ),
)


def validate(definition: profile_pb2.ComputedTraitDefinition) -> None:
    if not NAME.match(definition.name):
        raise InvalidArgument("definition.name", "must be 1-64 lower-case letters, digits or _, starting with a letter")
    if definition.name in {d.name for d in BUILT_IN}:
        raise InvalidArgument("definition.name", "is the name of a built-in commerce trait")
    if definition.aggregation == A.AGGREGATION_UNSPECIFIED:
        raise InvalidArgument("definition.aggregation", "is required")
    if not definition.event:
        raise InvalidArgument("definition.event", "is required")
    if definition.aggregation in NEEDS_PROPERTY and not definition.property:
        raise InvalidArgument("definition.property", f"is required for {A.Name(definition.aggregation)}")
    if definition.window_days < 0 or definition.window_days > 3650:
        raise InvalidArgument("definition.window_days", "must be between 0 (all time) and 3650")
    for index, f in enumerate(definition.filters):
        if not f.property:
            raise InvalidArgument(f"definition.filters[{index}].property", "is required")


def _property(event: event_pb2.Event, name: str):
    if name == "$timestamp":
        return event_time(event).ToJsonString()
    value = event.properties.fields.get(name)
    return None if value is None else json_format.MessageToDict(value)


def _matches(definition, event: event_pb2.Event) -> bool:
    if event_name(event) != definition.event:
        return False
    return all(event.properties.fields.get(f.property) == f.equals for f in definition.filters)


def update(definition, state: dict, event: event_pb2.Event) -> bool:
    """Add one event to the definition's partials; False when the event does not count."""
    if not _matches(definition, event):
        return False
    value = _property(event, definition.property) if definition.property else None
    if definition.property and value is None:
        return False
    if definition.aggregation in NUMERIC and not isinstance(value, (int, float)):
        return False
    when = event_time(event)
    bucket = day_of(when) if definition.window_days else ALL_TIME
    part = state.setdefault(bucket, {"n": 0})
    part["n"] += 1
    at = when.ToNanoseconds()
    if isinstance(value, (int, float)):
        part["sum"] = part.get("sum", 0) + value
        part["min"] = min(part.get("min", value), value)
        part["max"] = max(part.get("max", value), value)
    if value is not None:
        if "first" not in part or at < part["first"][0]:
            part["first"] = [at, value]
        if "last" not in part or at >= part["last"][0]:
            part["last"] = [at, value]
        if definition.aggregation in BY_VALUE:
            counts = part.setdefault("values", {})
            token = json.dumps(value, sort_keys=True)
            counts[token] = counts.get(token, 0) + 1
    return True


def value(definition, state: dict, now: datetime) -> struct_pb2.Value | None:
    """The computed value from the partials in the window, or None when no event counts."""
    if definition.window_days:
        oldest = oldest_day(now, definition.window_days)
        for day in [d for d in state if d < oldest]:
            del state[day]  # left the window for good
    parts = list(state.values())
    n = sum(p["n"] for p in parts)
    if n == 0:
        return None
    agg = definition.aggregation
    if agg == COUNT:
        result = n
    elif agg == SUM:
        result = sum(p.get("sum", 0) for p in parts)
    elif agg == MIN:
        result = min(p["min"] for p in parts if "min" in p)
    elif agg == MAX:
        result = max(p["max"] for p in parts if "max" in p)
    elif agg == AVERAGE:
        result = sum(p.get("sum", 0) for p in parts) / n
    elif agg == FIRST:
        result = min((p["first"] for p in parts if "first" in p), key=lambda f: f[0])[1]
    elif agg == LAST:
        result = max((p["last"] for p in parts if "last" in p), key=lambda f: f[0])[1]
    else:
        counts: dict[str, int] = {}
        for p in parts:
            for token, count in p.get("values", {}).items():
                counts[token] = counts.get(token, 0) + count
        if agg == DISTINCT:
            result = len(counts)
        else:  # most frequent; ties go to the smallest value, so the answer is stable
            result = json.loads(min(counts, key=lambda token: (-counts[token], token)))
    return _as_value(result)


def _as_value(result) -> struct_pb2.Value:
    """A JSON value as a protobuf Value (what json_format.ParseDict gives, faster for scalars)."""
    if isinstance(result, bool):
        return struct_pb2.Value(bool_value=result)
    if isinstance(result, (int, float)):
        return struct_pb2.Value(number_value=result)
    if isinstance(result, str):
        return struct_pb2.Value(string_value=result)
    out = struct_pb2.Value()
    json_format.ParseDict(result, out)
    return out


def _unchanged(definition, state: dict, counted: set[str], now: datetime) -> bool:
    """Whether a definition's value is still what the profile holds: no event counted, no day
    left its window, and a value held exactly when there are partials."""
    if definition.name in counted:
        return False
    if definition.window_days and state and min(state) < oldest_day(now, definition.window_days):
        return False
    return True


def refresh(
    profile: profile_pb2.Profile,
    definitions,
    states: dict,
    now: datetime,
    edits: Edits = UNRECORDED,
    counted: set[str] | None = None,
) -> None:
    """Set every computed trait of `profile` from the states; drop values of deleted definitions.
    With `counted` (the definitions the new event counted for), a value that cannot have changed
    is not computed again."""
    names = set()
    traits = profile.computed_traits
    for definition in definitions:
        name = definition.name
        names.add(name)
        state = states.setdefault(name, {})
        if counted is not None and (name in traits) == bool(state) and _unchanged(definition, state, counted, now):
            continue
        result = value(definition, state, now)
        current = traits.get(name)
        if result is None:
            if current is not None:
                edits.entry("computed_traits", name, current)
                del traits[name]
        elif current != result:
            edits.entry("computed_traits", name, current)
            traits[name].CopyFrom(result)
    for name in [n for n in traits if n not in names]:
        edits.entry("computed_traits", name, traits[name])
        del traits[name]
    for name in [n for n in states if n not in names and not n.startswith(RESERVED)]:
        del states[name]
