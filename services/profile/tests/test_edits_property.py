"""Property: the changes of a fold taken from what it wrote (fold.Edits, as the profile service
takes them) are those of a diff of the whole profiles, and computed traits and event series
refreshed only where an event counted or a window moved are those refreshed in full. Pure logic."""

from datetime import datetime, timedelta, timezone

from google.protobuf import timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.profile.v1 import profile_pb2
from profile_service import computed, history
from profile_service.fold import Edits, FoldRules, event_name, fold, oldest_day

START = datetime(2026, 9, 1, tzinfo=timezone.utc)
A = profile_pb2.Aggregation
DEFINITIONS = [
    *computed.BUILT_IN,
    profile_pb2.ComputedTraitDefinition(
        name="views_7d", aggregation=A.AGGREGATION_COUNT, event="Product Viewed", window_days=7
    ),
    profile_pb2.ComputedTraitDefinition(
        name="top_sku", aggregation=A.AGGREGATION_MOST_FREQUENT, event="Product Viewed", property="sku", window_days=3
    ),
    # Event series: kept for the counters' retention, changed a day at a time.
    profile_pb2.ComputedTraitDefinition(
        name="revenue_daily", aggregation=A.AGGREGATION_DAILY, event="Order Completed", property="revenue"
    ),
    profile_pb2.ComputedTraitDefinition(
        name="views_not_a",
        aggregation=A.AGGREGATION_DAILY,
        event="Product Viewed",
        filters=[
            profile_pb2.PropertyFilter(
                property="sku", equals={"string_value": "a"}, operator=profile_pb2.FILTER_OPERATOR_NOT_EQUALS
            )
        ],
    ),
]

spec = st.tuples(
    st.sampled_from(["identify", "view", "order", "group", "page"]),
    st.integers(0, 40),  # the event's day after START
    st.integers(0, 3),  # the day "now" moves on by, before this event
    st.sampled_from(["web", "crm"]),
    st.sampled_from(["a", "b", "c"]),  # a trait value / sku / group / identifier
)


def to_event(n: int, kind: str, day: int, source: str, value: str) -> resolved_pb2.ResolvedEvent:
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(START + timedelta(days=day, seconds=n))
    e = event_pb2.Event(message_id=f"m{n}", source_id=source, timestamp=when, user_id="u")
    if kind == "identify":
        e.type = event_pb2.EVENT_TYPE_IDENTIFY
        e.traits.update({"plan": value, f"t_{value}": n})
    elif kind == "group":
        e.type, e.group_id = event_pb2.EVENT_TYPE_GROUP, f"g-{value}"
        e.traits.update({"name": value})
    elif kind == "page":
        e.type = event_pb2.EVENT_TYPE_PAGE
    else:
        e.type = event_pb2.EVENT_TYPE_TRACK
        e.event = "Order Completed" if kind == "order" else "Product Viewed"
        e.properties.update({"revenue": n, "sku": value})
    return resolved_pb2.ResolvedEvent(
        profile_id="p", event=e, identifiers=[identity_pb2.Identifier(type="anonymous_id", value=value)]
    )


@settings(max_examples=200, deadline=None)
@given(specs=st.lists(spec, min_size=1, max_size=25))
def test_changes_from_what_a_fold_wrote_are_those_of_a_whole_diff(specs):
    rules = FoldRules(source_priority=("crm",), counter_days=10)
    profile, states, pruned = profile_pb2.Profile(profile_id="p"), {}, ""
    full_states: dict = {}
    now = START
    for n, (kind, day, moves, source, value) in enumerate(specs):
        now += timedelta(days=moves)
        resolved = to_event(n, kind, day, source, value)
        old = profile_pb2.Profile()
        old.CopyFrom(profile)
        edits = Edits(profile)
        oldest = oldest_day(now, rules.counter_days)
        fold(profile, resolved, rules, now, edits, prune=pruned != oldest)
        pruned = oldest
        name = event_name(resolved.event)
        counted = {}
        for d in DEFINITIONS:
            bucket = computed.update(d, states.setdefault(d.name, {}), resolved.event) if d.event == name else None
            if bucket is not None:
                counted[d.name] = bucket
        computed.refresh(profile, DEFINITIONS, states, now, rules.counter_days, edits, counted)
        profile.version += 1

        whole = profile_pb2.Profile()
        whole.CopyFrom(old)
        fold(whole, resolved, rules, now)
        for definition in DEFINITIONS:
            computed.update(definition, full_states.setdefault(definition.name, {}), resolved.event)
        computed.refresh(whole, DEFINITIONS, full_states, now, rules.counter_days)
        whole.version += 1
        assert profile == whole, f"after event {n}"
        assert history.diff(edits.before, profile, edits.paths) == history.diff(old, profile), f"after event {n}"
        assert sorted(edits.added("identities")) == sorted(set(profile.identities) - set(old.identities))
