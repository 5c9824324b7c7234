"""Computed traits: aggregations of a profile's events, all time or over a rolling window.

Each definition keeps a small partial per UTC day (or one for all time): count, sum, min, max,
first, last and value counts. A rolling window combines the partials of its last N days, so a
value is exact without rescanning events, and days that left the window are dropped. Pure
logic; the state is plain JSON kept beside the profile.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

from google.protobuf import json_format, struct_pb2

from mosaic.events.v1 import event_pb2
from mosaic.platform.errors import InvalidArgument
from mosaic.profile.v1 import profile_pb2
from profile_service.fold import event_name, event_time

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
ALL_TIME = "all"

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
    bucket = when.ToDatetime(timezone.utc).strftime("%Y-%m-%d") if definition.window_days else ALL_TIME
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
        if definition.aggregation in (A.AGGREGATION_MOST_FREQUENT, A.AGGREGATION_DISTINCT_COUNT):
            counts = part.setdefault("values", {})
            token = json.dumps(value, sort_keys=True)
            counts[token] = counts.get(token, 0) + 1
    return True


def value(definition, state: dict, now: datetime) -> struct_pb2.Value | None:
    """The computed value from the partials in the window, or None when no event counts."""
    if definition.window_days:
        oldest = (now - timedelta(days=definition.window_days - 1)).strftime("%Y-%m-%d")
        for day in [d for d in state if d < oldest]:
            del state[day]  # left the window for good
    parts = list(state.values())
    n = sum(p["n"] for p in parts)
    if n == 0:
        return None
    agg = definition.aggregation
    if agg == A.AGGREGATION_COUNT:
        result = n
    elif agg == A.AGGREGATION_SUM:
        result = sum(p.get("sum", 0) for p in parts)
    elif agg == A.AGGREGATION_MIN:
        result = min(p["min"] for p in parts if "min" in p)
    elif agg == A.AGGREGATION_MAX:
        result = max(p["max"] for p in parts if "max" in p)
    elif agg == A.AGGREGATION_AVERAGE:
        result = sum(p.get("sum", 0) for p in parts) / n
    elif agg == A.AGGREGATION_FIRST:
        result = min((p["first"] for p in parts if "first" in p), key=lambda f: f[0])[1]
    elif agg == A.AGGREGATION_LAST:
        result = max((p["last"] for p in parts if "last" in p), key=lambda f: f[0])[1]
    else:
        counts: dict[str, int] = {}
        for p in parts:
            for token, count in p.get("values", {}).items():
                counts[token] = counts.get(token, 0) + count
        if agg == A.AGGREGATION_DISTINCT_COUNT:
            result = len(counts)
        else:  # most frequent; ties go to the smallest value, so the answer is stable
            result = json.loads(min(counts, key=lambda token: (-counts[token], token)))
    out = struct_pb2.Value()
    json_format.ParseDict(result, out)
    return out


def refresh(profile: profile_pb2.Profile, definitions, states: dict, now: datetime) -> None:
    """Set every computed trait of `profile` from the states; drop values of deleted definitions."""
    names = set()
    for definition in definitions:
        names.add(definition.name)
        result = value(definition, states.setdefault(definition.name, {}), now)
        if result is None:
            profile.computed_traits.pop(definition.name, None)
        else:
            profile.computed_traits[definition.name].CopyFrom(result)
    for name in [n for n in profile.computed_traits if n not in names]:
        del profile.computed_traits[name]
    for name in [n for n in states if n not in names]:
        del states[name]
