"""Event series: what an event condition reads when the daily counters cannot answer it.

`count(event "Order Completed" in last 30d)` reads the profile's daily counters (a count per day
and event name). A condition on a property (`sum(event "Order Completed".revenue ...)`) or with
filters (`count(event "Order Completed" where currency = "EUR" ...)`) reads an *event series*:
per-day partials (count, sum, min, max) the profile service keeps on every profile once asked
(DefineEventSeries), backfilled from its event archive. A series is named by its shape, so the
conditions of every segment that read the same events share one. Pure logic.
"""

from __future__ import annotations

import hashlib
import json

from google.protobuf import struct_pb2

from mosaic.platform.errors import InvalidArgument
from mosaic.profile.v1 import profile_pb2, profile_service_pb2
from mosaic.segmentation.v1 import segment_pb2 as pb

Op = pb.Operator
FILTER_OPERATORS = {
    Op.OPERATOR_EQUALS: profile_pb2.FILTER_OPERATOR_EQUALS,
    Op.OPERATOR_NOT_EQUALS: profile_pb2.FILTER_OPERATOR_NOT_EQUALS,
    Op.OPERATOR_LESS_THAN: profile_pb2.FILTER_OPERATOR_LESS_THAN,
    Op.OPERATOR_LESS_OR_EQUAL: profile_pb2.FILTER_OPERATOR_LESS_OR_EQUAL,
    Op.OPERATOR_GREATER_THAN: profile_pb2.FILTER_OPERATOR_GREATER_THAN,
    Op.OPERATOR_GREATER_OR_EQUAL: profile_pb2.FILTER_OPERATOR_GREATER_OR_EQUAL,
}
ORDERINGS = {Op.OPERATOR_LESS_THAN, Op.OPERATOR_LESS_OR_EQUAL, Op.OPERATOR_GREATER_THAN, Op.OPERATOR_GREATER_OR_EQUAL}
PREFIX = "series_"
# The aggregates every profile has a value of (0 without events); the others have none then.
TOTALS = frozenset({pb.AGGREGATE_COUNT, pb.AGGREGATE_SUM})


def needs_series(event: pb.EventPredicate) -> bool:
    """Whether the condition reads a series rather than the daily counters."""
    return bool(event.property or event.filters)


def _filter_value(literal: pb.Literal, op: int, field: str) -> struct_pb2.Value:
    kind = literal.WhichOneof("kind")
    if kind == "string_value":
        return struct_pb2.Value(string_value=literal.string_value)
    if kind == "number_value":
        return struct_pb2.Value(number_value=literal.number_value)
    if kind == "bool_value":
        if op in ORDERINGS:
            raise InvalidArgument(field, f"a boolean has no order ({Op.Name(op)})")
        return struct_pb2.Value(bool_value=literal.bool_value)
    raise InvalidArgument(field, "an event property is compared with a string, a number or a boolean")


def check(event: pb.EventPredicate, field: str) -> None:
    """The rules of a series condition the grammar cannot check; InvalidArgument naming the node."""
    if event.aggregate != pb.AGGREGATE_COUNT and not event.property:
        raise InvalidArgument(f"{field}.property", f"is required for {pb.Aggregate.Name(event.aggregate)}")
    if event.aggregate == pb.AGGREGATE_COUNT and event.property:
        raise InvalidArgument(f"{field}.property", "count(...) counts events: name no property (filter with where)")
    for index, f in enumerate(event.filters):
        at = f"{field}.filters[{index}]"
        if not f.property:
            raise InvalidArgument(f"{at}.property", "is required")
        if f.operator not in FILTER_OPERATORS:
            raise InvalidArgument(f"{at}.operator", "must be one of =, !=, <, <=, >, >=")
        _filter_value(f.value, f.operator, f"{at}.value")


def definition(event: pb.EventPredicate) -> profile_service_pb2.DefineEventSeriesRequest:
    """The series the condition reads, as the profile service is asked to keep it. Filters are
    sorted, so `where a = 1 and b = 2` and `where b = 2 and a = 1` read one series."""
    filters = sorted(
        (
            profile_pb2.PropertyFilter(
                property=f.property,
                operator=FILTER_OPERATORS[f.operator],
                equals=_filter_value(f.value, f.operator, ""),
            )
            for f in event.filters
        ),
        key=lambda f: f.SerializeToString(deterministic=True),
    )
    shape = [event.event, event.property, [f.SerializeToString(deterministic=True).hex() for f in filters]]
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:24]
    return profile_service_pb2.DefineEventSeriesRequest(
        name=PREFIX + digest, event=event.event, property=event.property, filters=filters
    )


def name_of(event: pb.EventPredicate) -> str:
    return definition(event).name


def needed(expression: pb.Expression) -> list[profile_service_pb2.DefineEventSeriesRequest]:
    """Every series an (inlined) expression reads, each once, by name."""
    found: dict[str, profile_service_pb2.DefineEventSeriesRequest] = {}

    def walk(node: pb.Expression) -> None:
        kind = node.WhichOneof("kind")
        if kind in ("and", "or"):
            for operand in getattr(node, kind).operands:
                walk(operand)
        elif kind == "not":
            walk(getattr(node, "not"))
        elif kind == "event" and needs_series(node.event):
            request = definition(node.event)
            found[request.name] = request

    walk(expression)
    return [found[name] for name in sorted(found)]
