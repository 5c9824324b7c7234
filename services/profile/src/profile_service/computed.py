"""Computed traits: aggregations of a profile's events, all time or over a rolling window.

Each definition keeps a small partial per UTC day (or one for all time): count, sum, min, max,
first, last and value counts. A rolling window combines the partials of its last N days, so a
value is exact without rescanning events, and days that left the window are dropped. An event
series (AGGREGATION_DAILY, DefineEventSeries) has no value: its per-day partials are the
profile's `daily_series`, kept for the counters' retention, for a reader that combines the days
of its own windows. Pure logic; the state is plain JSON kept beside the profile.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime

from google.protobuf import json_format, struct_pb2

from mosaic.events.v1 import event_pb2
from mosaic.platform.errors import AlreadyExists, InvalidArgument
from mosaic.profile.v1 import profile_pb2
from profile_service.fold import UNRECORDED, Edits, day_of, event_name, event_time, oldest_day
from profile_service.history import timestamp_text

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
DISTINCT, DAILY = A.AGGREGATION_DISTINCT_COUNT, A.AGGREGATION_DAILY
BY_VALUE = {A.AGGREGATION_MOST_FREQUENT, DISTINCT}
ALL_TIME = "all"
F = profile_pb2.FilterOperator
EQUALS, NOT_EQUALS = F.FILTER_OPERATOR_EQUALS, F.FILTER_OPERATOR_NOT_EQUALS
LESS, AT_MOST = F.FILTER_OPERATOR_LESS_THAN, F.FILTER_OPERATOR_LESS_OR_EQUAL
GREATER, AT_LEAST = F.FILTER_OPERATOR_GREATER_THAN, F.FILTER_OPERATOR_GREATER_OR_EQUAL
ORDERINGS = frozenset({LESS, AT_MOST, GREATER, AT_LEAST})
# The kinds of Value an ordering compares (a bool is not a number).
ORDERED = ("number_value", "string_value")
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


def validate(definition: profile_pb2.ComputedTraitDefinition, prefix: str = "definition.") -> None:
    """Refuse a definition that breaks a rule, naming the field (`prefix` + its name)."""
    if not NAME.match(definition.name):
        raise InvalidArgument(f"{prefix}name", "must be 1-64 lower-case letters, digits or _, starting with a letter")
    if definition.name in {d.name for d in BUILT_IN}:
        raise InvalidArgument(f"{prefix}name", "is the name of a built-in commerce trait")
    if definition.aggregation == A.AGGREGATION_UNSPECIFIED:
        raise InvalidArgument(f"{prefix}aggregation", "is required")
    if not definition.event:
        raise InvalidArgument(f"{prefix}event", "is required")
    if definition.aggregation in NEEDS_PROPERTY and not definition.property:
        raise InvalidArgument(f"{prefix}property", f"is required for {A.Name(definition.aggregation)}")
    if definition.aggregation == DAILY and definition.property == "$timestamp":
        raise InvalidArgument(f"{prefix}property", "must be a numeric property, not the event's time")
    if definition.window_days < 0 or definition.window_days > 3650:
        raise InvalidArgument(f"{prefix}window_days", "must be between 0 (all time) and 3650")
    for index, f in enumerate(definition.filters):
        where = f"{prefix}filters[{index}]"
        if not f.property:
            raise InvalidArgument(f"{where}.property", "is required")
        if f.operator not in F.values():
            raise InvalidArgument(f"{where}.operator", f"is not a FilterOperator: {f.operator}")
        if f.operator in ORDERINGS and f.equals.WhichOneof("kind") not in ORDERED:
            raise InvalidArgument(f"{where}.equals", f"must be a number or a string for {F.Name(f.operator)}")


def same_series(stored: profile_pb2.ComputedTraitDefinition, wanted: profile_pb2.ComputedTraitDefinition) -> None:
    """Refuse (ALREADY_EXISTS, naming the field) a series whose name `stored` holds with another
    shape. Filters are a conjunction: their order does not matter, nor EQUALS spelled unspecified."""
    if stored.aggregation != DAILY:
        raise AlreadyExists("computed trait", stored.name, _another("aggregation"))
    for field in ("event", "property"):
        if getattr(stored, field) != getattr(wanted, field):
            raise AlreadyExists("event series", stored.name, _another(field))
    if _filter_keys(stored) != _filter_keys(wanted):
        raise AlreadyExists("event series", stored.name, _another("filters"))


def _another(field: str) -> str:
    return f"defined with another {field}"


def _filter_keys(definition) -> list[tuple[str, int, bytes]]:
    return sorted(
        (f.property, f.operator or EQUALS, f.equals.SerializeToString(deterministic=True)) for f in definition.filters
    )


def _property(event: event_pb2.Event, name: str):
    if name == "$timestamp":
        return timestamp_text(event_time(event))
    value = event.properties.fields.get(name)
    return None if value is None else json_format.MessageToDict(value)


def _matches(definition, event: event_pb2.Event) -> bool:
    if event_name(event) != definition.event:
        return False
    fields = event.properties.fields
    return all(_passes(f, fields.get(f.property)) for f in definition.filters)


def _passes(f: profile_pb2.PropertyFilter, found: struct_pb2.Value | None) -> bool:
    """Whether an event's property (None: the event has none) passes a filter."""
    if found is None:
        return False
    operator = f.operator
    if operator <= EQUALS:  # unspecified is equals
        return found == f.equals
    if operator == NOT_EQUALS:
        return found != f.equals
    kind = found.WhichOneof("kind")
    if kind not in ORDERED or kind != f.equals.WhichOneof("kind"):
        return False  # never across kinds
    mine, theirs = getattr(found, kind), getattr(f.equals, kind)
    if operator == LESS:
        return mine < theirs
    if operator == AT_MOST:
        return mine <= theirs
    if operator == GREATER:
        return mine > theirs
    return mine >= theirs


def update(definition, state: dict, event: event_pb2.Event) -> str | None:
    """Add one event to the definition's partials: the bucket it added to (a day, or ALL_TIME),
    None when the event does not count."""
    if not _matches(definition, event):
        return None
    if definition.aggregation == DAILY:
        return _add_day(definition, state, event)
    value = _property(event, definition.property) if definition.property else None
    if definition.property and value is None:
        return None
    if definition.aggregation in NUMERIC and not isinstance(value, (int, float)):
        return None
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
    return bucket


def _add_day(definition, state: dict, event: event_pb2.Event) -> str | None:
    """An event series' day: the count, and for a property only its numbers (a bool is not one)."""
    number = None
    if definition.property:
        found = event.properties.fields.get(definition.property)
        if found is None or found.WhichOneof("kind") != "number_value":
            return None
        number = found.number_value
    day = day_of(event_time(event))
    part = state.setdefault(day, {"n": 0})
    part["n"] += 1
    if number is not None:
        part["sum"] = part.get("sum", 0) + number
        part["min"] = min(part.get("min", number), number)
        part["max"] = max(part.get("max", number), number)
    return day


def value(definition, state: dict, now: datetime) -> struct_pb2.Value | None:
    """The computed value from the partials in the window, or None when no event counts (and for
    an event series, whose days are the profile's daily_series: `refresh`)."""
    if definition.aggregation == DAILY:
        return None
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


def _unchanged(definition, state: dict, counted: Mapping[str, str], now: datetime) -> bool:
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
    counter_days: int,
    edits: Edits = UNRECORDED,
    counted: Mapping[str, str] | None = None,
) -> None:
    """Set every computed trait of `profile` from the states, and the daily series of each event
    series from its days within the counters' retention (`counter_days`, the older days go);
    drop the values and series of deleted definitions. With `counted` (each definition the new
    event counted for, with the bucket it added to), a value that cannot have changed is not
    computed again, and a series changes on that day only (or as a day leaves the retention)."""
    names = set()
    series_names = set()
    traits = profile.computed_traits
    series = profile.daily_series
    oldest = oldest_day(now, counter_days)
    for definition in definitions:
        name = definition.name
        state = states.setdefault(name, {})
        if definition.aggregation == DAILY:
            series_names.add(name)
            _refresh_series(series, name, state, oldest, edits, counted)
            continue
        names.add(name)
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
    if counted is None:  # in full: what no series' state holds goes (a split's base, a series redefined)
        for key in list(series):
            day, _, name = key.partition("|")
            if name not in series_names or day not in states[name]:
                _drop(series, key, edits)
    kept = names | series_names
    for name in [n for n in states if n not in kept and not n.startswith(RESERVED)]:
        for day in states[name]:  # a deleted series' days are its entries
            _drop(series, f"{day}|{name}", edits)
        del states[name]


def _refresh_series(series, name: str, state: dict, oldest: str, edits: Edits, counted) -> None:
    """One event series' entries from its days: every day, or with `counted` the day counted."""
    if state and min(state) < oldest:
        for day in [d for d in state if d < oldest]:
            del state[day]  # left the retention for good
            _drop(series, f"{day}|{name}", edits)
    if counted is None:
        days = list(state)
    elif counted.get(name) in state:
        days = [counted[name]]
    else:
        return
    for day in days:
        part = state[day]
        key = f"{day}|{name}"
        wanted = profile_pb2.DailySeries(
            day=day,
            series=name,
            count=part["n"],
            sum=part.get("sum", 0),
            min=part.get("min", 0),
            max=part.get("max", 0),
        )
        current = series.get(key)
        if current != wanted:
            edits.entry("daily_series", key, current)
            series[key].CopyFrom(wanted)


def _drop(series, key: str, edits: Edits) -> None:
    current = series.get(key)
    if current is not None:
        edits.entry("daily_series", key, current)
        del series[key]
