"""Computed traits: pure logic."""

from datetime import datetime, timezone

import pytest
from google.protobuf import timestamp_pb2

from mosaic.events.v1 import event_pb2
from mosaic.platform.errors import InvalidArgument
from mosaic.profile.v1 import profile_pb2
from profile_service import computed

A = profile_pb2.Aggregation
NOW = datetime(2026, 11, 23, 12, tzinfo=timezone.utc)


def order(days_ago: float, revenue, **props) -> event_pb2.Event:
    e = event_pb2.Event(
        type=event_pb2.EVENT_TYPE_TRACK,
        event="Order Completed",
        timestamp=timestamp_pb2.Timestamp(seconds=int(NOW.timestamp() - days_ago * 86400)),
    )
    e.properties.update({"revenue": revenue, **props})
    return e


def compute(definition, events):
    state: dict = {}
    for e in events:
        computed.update(definition, state, e)
    value = computed.value(definition, state, NOW)
    return None if value is None else value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))


EVENTS = [order(40, 10, category="books"), order(3, 30, category="games"), order(1, 20, category="games")]


@pytest.mark.parametrize(
    ("aggregation", "prop", "window", "expected"),
    [
        (A.AGGREGATION_COUNT, "", 0, 3),
        (A.AGGREGATION_COUNT, "", 30, 2),
        (A.AGGREGATION_SUM, "revenue", 0, 60),
        (A.AGGREGATION_MIN, "revenue", 0, 10),
        (A.AGGREGATION_MAX, "revenue", 30, 30),
        (A.AGGREGATION_AVERAGE, "revenue", 0, 20),
        (A.AGGREGATION_FIRST, "category", 0, "books"),
        (A.AGGREGATION_LAST, "category", 0, "games"),
        (A.AGGREGATION_MOST_FREQUENT, "category", 0, "games"),
        (A.AGGREGATION_DISTINCT_COUNT, "category", 0, 2),
    ],
)
def test_each_aggregation_over_all_time_or_a_window(aggregation, prop, window, expected):
    definition = profile_pb2.ComputedTraitDefinition(
        name="t", aggregation=aggregation, event="Order Completed", property=prop, window_days=window
    )
    assert compute(definition, EVENTS) == expected


def test_filters_keep_only_matching_events():
    definition = profile_pb2.ComputedTraitDefinition(
        name="games",
        aggregation=A.AGGREGATION_SUM,
        event="Order Completed",
        property="revenue",
        filters=[profile_pb2.PropertyFilter(property="category", equals={"string_value": "games"})],
    )
    assert compute(definition, EVENTS) == 50


def test_the_built_in_commerce_traits():
    values = {d.name: compute(d, EVENTS) for d in computed.BUILT_IN}
    assert values["orders"] == 3 and values["lifetime_value"] == 60 and values["average_order_value"] == 20
    assert values["first_order_at"] < values["last_order_at"]


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        (
            profile_pb2.ComputedTraitDefinition(name="Bad Name", aggregation=A.AGGREGATION_COUNT, event="x"),
            "definition.name",
        ),
        (
            profile_pb2.ComputedTraitDefinition(name="orders", aggregation=A.AGGREGATION_COUNT, event="x"),
            "definition.name",
        ),
        (profile_pb2.ComputedTraitDefinition(name="n", event="x"), "definition.aggregation"),
        (
            profile_pb2.ComputedTraitDefinition(name="n", aggregation=A.AGGREGATION_SUM, event="x"),
            "definition.property",
        ),
        (
            profile_pb2.ComputedTraitDefinition(name="n", aggregation=A.AGGREGATION_COUNT, event="x", window_days=-1),
            "definition.window_days",
        ),
    ],
)
def test_an_invalid_definition_names_the_field(definition, field):
    with pytest.raises(InvalidArgument) as caught:
        computed.validate(definition)
    assert caught.value.field == field
