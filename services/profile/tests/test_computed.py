"""Computed traits and event series: pure logic."""

from datetime import datetime, timezone

import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from mosaic.events.v1 import event_pb2
from mosaic.platform.errors import AlreadyExists, InvalidArgument
from mosaic.profile.v1 import profile_pb2
from profile_service import computed, history
from profile_service.fold import Edits

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


F = profile_pb2.FilterOperator
DAY = 86400


def series(name="revenue", prop="revenue", filters=()) -> profile_pb2.ComputedTraitDefinition:
    return profile_pb2.ComputedTraitDefinition(
        name=name, aggregation=A.AGGREGATION_DAILY, event="Order Completed", property=prop, filters=filters
    )


def day(days_ago: float) -> str:
    return datetime.fromtimestamp(NOW.timestamp() - days_ago * DAY, tz=timezone.utc).strftime("%Y-%m-%d")


def entries(profile) -> dict[str, tuple]:
    return {k: (s.day, s.series, s.count, s.sum, s.min, s.max) for k, s in profile.daily_series.items()}


def test_a_series_keeps_per_day_partials_of_the_numbers_only_in_daily_series():
    definition = series()
    events = [
        order(3, 30),
        order(3, 10.5),
        order(3, "12"),  # a string is not a number
        order(3, True),  # nor is a bool
        order(1, 20),
    ]
    missing = order(1, 0)
    del missing.properties.fields["revenue"]
    states: dict = {}
    for e in [*events, missing]:
        computed.update(definition, states.setdefault(definition.name, {}), e)
    profile = profile_pb2.Profile()
    computed.refresh(profile, [definition], states, NOW, 90)
    assert entries(profile) == {
        f"{day(3)}|revenue": (day(3), "revenue", 2, 40.5, 10.5, 30),
        f"{day(1)}|revenue": (day(1), "revenue", 1, 20, 20, 20),
    }
    assert not profile.computed_traits, "a series is not a computed trait's value"
    assert computed.value(definition, states["revenue"], NOW) is None


def test_a_series_without_a_property_counts_every_matching_event_and_leaves_sums_at_zero():
    definition = series(name="orders_daily", prop="")
    states: dict = {}
    for e in [order(2, "x"), order(2, True), order(0, 5)]:
        computed.update(definition, states.setdefault(definition.name, {}), e)
    profile = profile_pb2.Profile()
    computed.refresh(profile, [definition], states, NOW, 90)
    assert entries(profile) == {
        f"{day(2)}|orders_daily": (day(2), "orders_daily", 2, 0, 0, 0),
        f"{day(0)}|orders_daily": (day(0), "orders_daily", 1, 0, 0, 0),
    }


def test_days_before_the_retention_are_dropped_and_as_the_clock_moves_on_recorded_as_changes():
    definition = series()
    states: dict = {}
    for e in [order(40, 1), order(9, 2), order(0, 3)]:
        computed.update(definition, states.setdefault(definition.name, {}), e)
    profile = profile_pb2.Profile()
    computed.refresh(profile, [definition], states, NOW, 10)
    assert set(profile.daily_series) == {f"{day(9)}|revenue", f"{day(0)}|revenue"}, "day 40 is past 10 days"
    assert set(states["revenue"]) == {day(9), day(0)}

    # Two days later an event counts: its day changes, and day 9 (now 11) leaves the retention.
    later = datetime.fromtimestamp(NOW.timestamp() + 2 * DAY, tz=timezone.utc)
    e = order(-2, 4)
    counted = {definition.name: computed.update(definition, states["revenue"], e)}
    edits = Edits(profile)
    computed.refresh(profile, [definition], states, later, 10, edits, counted)
    assert set(profile.daily_series) == {f"{day(0)}|revenue", f"{day(-2)}|revenue"}
    assert set(states["revenue"]) == {day(0), day(-2)}
    assert edits.paths == {"daily_series": {f"{day(9)}|revenue", f"{day(-2)}|revenue"}}, "only what changed"
    changes = {c.path: c for c in history.diff(edits.before, profile, edits.paths)}
    assert not changes[f"daily_series.{day(9)}|revenue"].HasField("new_value")
    assert json_format.MessageToDict(changes[f"daily_series.{day(-2)}|revenue"].new_value) == {
        "count": 1,
        "sum": 4,
        "min": 4,
        "max": 4,
    }


def test_an_event_adds_to_its_own_day_only_and_a_late_one_past_the_retention_changes_nothing():
    definition = series()
    states: dict = {}
    for e in [order(2, 1), order(1, 2)]:
        computed.update(definition, states.setdefault(definition.name, {}), e)
    profile = profile_pb2.Profile()
    computed.refresh(profile, [definition], states, NOW, 90)
    edits = Edits(profile)
    counted = {definition.name: computed.update(definition, states["revenue"], order(1, 5))}
    computed.refresh(profile, [definition], states, NOW, 90, edits, counted)
    assert edits.paths == {"daily_series": {f"{day(1)}|revenue"}}
    assert entries(profile)[f"{day(1)}|revenue"][2:] == (2, 7, 2, 5)

    edits = Edits(profile)
    counted = {definition.name: computed.update(definition, states["revenue"], order(200, 5))}
    computed.refresh(profile, [definition], states, NOW, 90, edits, counted)
    assert edits.paths == {} and day(200) not in states["revenue"]


@pytest.mark.parametrize("incremental", [True, False])
def test_a_deleted_series_drops_its_entries(incremental):
    kept, gone = series(name="kept"), series(name="gone")
    states: dict = {}
    for definition in (kept, gone):
        computed.update(definition, states.setdefault(definition.name, {}), order(1, 3))
    profile = profile_pb2.Profile()
    computed.refresh(profile, [kept, gone], states, NOW, 90)
    assert set(profile.daily_series) == {f"{day(1)}|kept", f"{day(1)}|gone"}
    edits = Edits(profile)
    computed.refresh(profile, [kept], states, NOW, 90, edits, {} if incremental else None)
    assert set(profile.daily_series) == {f"{day(1)}|kept"} and "gone" not in states
    assert edits.paths == {"daily_series": {f"{day(1)}|gone"}}


def test_a_full_refresh_drops_entries_no_state_holds():
    """A split's base profile carries the series of before; its states are recounted."""
    definition = series()
    profile = profile_pb2.Profile()
    profile.daily_series[f"{day(5)}|revenue"].count = 9
    profile.daily_series[f"{day(5)}|old_series"].count = 1
    states: dict = {}
    computed.update(definition, states.setdefault("revenue", {}), order(1, 3))
    computed.refresh(profile, [definition], states, NOW, 90)
    assert set(profile.daily_series) == {f"{day(1)}|revenue"}


def number(n) -> struct_pb2.Value:
    return struct_pb2.Value(number_value=n)


def text(s) -> struct_pb2.Value:
    return struct_pb2.Value(string_value=s)


@pytest.mark.parametrize(
    ("operator", "value", "passing"),
    [
        (F.FILTER_OPERATOR_UNSPECIFIED, number(20), [20]),
        (F.FILTER_OPERATOR_EQUALS, number(20), [20]),
        (F.FILTER_OPERATOR_EQUALS, text("EUR"), ["EUR"]),
        (F.FILTER_OPERATOR_EQUALS, struct_pb2.Value(bool_value=True), [True]),
        (F.FILTER_OPERATOR_NOT_EQUALS, number(20), [10, 30, "CHF", "EUR", "eur", True]),
        (F.FILTER_OPERATOR_LESS_THAN, number(20), [10]),
        (F.FILTER_OPERATOR_LESS_OR_EQUAL, number(20), [10, 20]),
        (F.FILTER_OPERATOR_GREATER_THAN, number(20), [30]),
        (F.FILTER_OPERATOR_GREATER_OR_EQUAL, number(20), [20, 30]),
        (F.FILTER_OPERATOR_GREATER_OR_EQUAL, number(1), [10, 20, 30]),  # a bool is not a number
        (F.FILTER_OPERATOR_LESS_THAN, text("EUR"), ["CHF"]),
        (F.FILTER_OPERATOR_LESS_OR_EQUAL, text("EUR"), ["CHF", "EUR"]),
        (F.FILTER_OPERATOR_GREATER_THAN, text("EUR"), ["eur"]),  # code points: lower case after upper
        (F.FILTER_OPERATOR_GREATER_OR_EQUAL, text("EUR"), ["EUR", "eur"]),
    ],
)
def test_each_filter_operator_keeps_what_it_says_and_never_across_kinds_or_without_the_property(
    operator, value, passing
):
    """Candidates of every kind: numbers either side, strings either side, a bool, and an event
    without the property, which no operator keeps (not even NOT_EQUALS)."""
    definition = series(prop="", filters=[profile_pb2.PropertyFilter(property="tag", equals=value, operator=operator)])
    candidates = [10, 20, 30, "CHF", "EUR", "eur", True, None]
    kept = []
    for candidate in candidates:
        e = order(1, 1) if candidate is None else order(1, 1, tag=candidate)
        if computed.update(definition, {}, e) is not None:
            kept.append(candidate)
    assert kept == passing


def test_filters_apply_to_every_computed_trait():
    definition = profile_pb2.ComputedTraitDefinition(
        name="big",
        aggregation=A.AGGREGATION_COUNT,
        event="Order Completed",
        filters=[
            profile_pb2.PropertyFilter(
                property="revenue", equals={"number_value": 20}, operator=F.FILTER_OPERATOR_GREATER_OR_EQUAL
            )
        ],
    )
    assert compute(definition, EVENTS) == 2


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ([profile_pb2.PropertyFilter(equals={"number_value": 1})], "filters[0].property"),
        (
            [
                profile_pb2.PropertyFilter(property="a", equals={"number_value": 1}),
                profile_pb2.PropertyFilter(
                    property="b", equals={"bool_value": True}, operator=F.FILTER_OPERATOR_LESS_THAN
                ),
            ],
            "filters[1].equals",
        ),
        ([profile_pb2.PropertyFilter(property="a", operator=F.FILTER_OPERATOR_GREATER_THAN)], "filters[0].equals"),
        ([profile_pb2.PropertyFilter(property="a", operator=99)], "filters[0].operator"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_filter_names_its_field(filters, field):
    with pytest.raises(InvalidArgument) as caught:
        computed.validate(series(filters=filters), prefix="")
    assert caught.value.field == field


def test_a_series_of_the_event_time_is_refused():
    with pytest.raises(InvalidArgument) as caught:
        computed.validate(series(prop="$timestamp"), prefix="")
    assert caught.value.field == "property"


def test_the_same_series_in_another_order_is_the_same_and_another_shape_names_the_field():
    eur = profile_pb2.PropertyFilter(property="currency", equals={"string_value": "EUR"})
    big = profile_pb2.PropertyFilter(
        property="revenue", equals={"number_value": 100}, operator=F.FILTER_OPERATOR_GREATER_THAN
    )
    stored = series(filters=[eur, big])
    spelled = profile_pb2.PropertyFilter()
    spelled.CopyFrom(eur)
    spelled.operator = F.FILTER_OPERATOR_EQUALS
    computed.same_series(stored, series(filters=[big, spelled]))  # no error
    for wanted, field in (
        (profile_pb2.ComputedTraitDefinition(name="revenue", aggregation=A.AGGREGATION_DAILY, event="Other"), "event"),
        (series(prop="total", filters=[eur, big]), "property"),
        (series(filters=[eur]), "filters"),
    ):
        with pytest.raises(AlreadyExists) as caught:
            computed.same_series(stored, wanted)
        assert caught.value.description == f"defined with another {field}" and field in str(caught.value)
    trait = profile_pb2.ComputedTraitDefinition(name="revenue", aggregation=A.AGGREGATION_SUM, event="Order Completed")
    with pytest.raises(AlreadyExists) as caught:
        computed.same_series(trait, series())
    assert caught.value.description == "defined with another aggregation"
