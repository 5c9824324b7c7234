"""Merges and splits on the embedded store and a real nats-server."""

from mosaic.events.v1 import event_pb2, identity_changed_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Delivery
from mosaic.profile.v1 import profile_pb2
from profile_service.fold import day_of
from profile_service.merges import MergeHandler

DELIVERY = Delivery("x", 0, 1, 1, "")


def event(profile_id, message_id, user_id, seconds, kind="identify", **fields) -> resolved_pb2.ResolvedEvent:
    e = event_pb2.Event(message_id=message_id, user_id=user_id)
    e.timestamp.GetCurrentTime()
    e.timestamp.seconds -= 1000 - seconds
    if kind == "identify":
        e.type = event_pb2.EVENT_TYPE_IDENTIFY
        e.traits.update(fields)
    else:
        e.type, e.event = event_pb2.EVENT_TYPE_TRACK, "Order Completed"
        e.properties.update(fields)
    return resolved_pb2.ResolvedEvent(
        profile_id=profile_id, event=e, identifiers=[identity_pb2.Identifier(type="user_id", value=user_id)]
    )


async def test_a_merge_folds_the_merged_profile_into_the_survivor_and_a_split_undoes_it(profiles):
    merges = MergeHandler(profiles)
    await profiles.apply(event("A", "a1", "ada", 100, plan="free", city="Paris"))
    await profiles.apply(event("A", "a2", "ada", 110, "order", revenue=10))
    await profiles.apply(event("B", "b1", "ada-phone", 200, plan="pro"))
    await profiles.apply(event("B", "b2", "ada-phone", 210, "order", revenue=30))

    merge = identity_changed_pb2.IdentityMerged(
        merge_id="merge-1", survivor_profile_id="A", merged_profile_ids=["B"], rule="shared email"
    )
    await merges.merged(merge, DELIVERY)
    await merges.merged(merge, DELIVERY)  # redelivered: applied once
    a = (await profiles.store.latest("A")).profile
    assert a.traits["plan"].value.string_value == "pro", "the later event time wins"
    assert a.traits["city"].value.string_value == "Paris"
    assert a.event_count == 4 and set(a.identities) == {"user_id:ada", "user_id:ada-phone"}
    assert a.computed_traits["orders"].number_value == 2 and a.computed_traits["lifetime_value"].number_value == 40
    assert (await profiles.store.latest("B")).merged_into == "A"
    merged_version = a.version

    # An event for B still on its way after the merge is forwarded to A.
    assert await profiles.apply(event("B", "b3", "ada-phone", 300, "order", revenue=5)) is None
    forwarded = await profiles.bus._js.get_last_msg(
        topics.EVENTS_RESOLVED.stream,
        topics.EVENTS_RESOLVED.subject(topics.partition_of("A", profiles.bus.partitions), "A"),
    )
    assert resolved_pb2.ResolvedEvent.FromString(forwarded.data).profile_id == "A"
    await profiles.apply(resolved_pb2.ResolvedEvent.FromString(forwarded.data))
    await profiles.apply(event("A", "a3", "ada", 310, nickname="ada"))
    assert (await profiles.store.latest("A")).profile.computed_traits["lifetime_value"].number_value == 45

    split = identity_changed_pb2.IdentitySplit(
        merge_id="merge-1", split_id="split-1", survivor_profile_id="A", restored_profile_ids=["B"]
    )
    await merges.split(split, DELIVERY)
    await merges.split(split, DELIVERY)  # redelivered: applied once
    a = (await profiles.store.latest("A")).profile
    b = await profiles.store.latest("B")
    assert b.merged_into == ""
    assert a.traits["plan"].value.string_value == "free" and a.traits["nickname"].value.string_value == "ada"
    assert set(a.identities) == {"user_id:ada"}
    assert a.computed_traits["lifetime_value"].number_value == 10
    assert b.profile.traits["plan"].value.string_value == "pro"
    assert b.profile.computed_traits["lifetime_value"].number_value == 35, (
        "B's own orders and the one sent after the merge"
    )
    assert a.version == merged_version + 3, "merge, two events, then the split: all in A's history"
    at_merge = await profiles.at_version("A", merged_version)
    assert at_merge.event_count == 4, "the history keeps the merged state"


SERIES = profile_pb2.ComputedTraitDefinition(
    name="revenue_daily", aggregation=profile_pb2.AGGREGATION_DAILY, event="Order Completed", property="revenue"
)


def daily(events: list[resolved_pb2.ResolvedEvent]) -> dict[str, tuple]:
    """The series' entries the events make, summed by hand."""
    found: dict[str, tuple] = {}
    for e in events:
        key, revenue = f"{day_of(e.event.timestamp)}|revenue_daily", e.event.properties["revenue"]
        count, total, low, high = found.get(key, (0, 0.0, revenue, revenue))
        found[key] = (count + 1, total + revenue, min(low, revenue), max(high, revenue))
    return found


def entries(profile: profile_pb2.Profile) -> dict[str, tuple]:
    return {key: (s.count, s.sum, s.min, s.max) for key, s in profile.daily_series.items()}


async def test_a_merge_adds_both_sides_event_series_and_a_split_recounts_each(profiles):
    await profiles.store.create_definition(SERIES)
    merges = MergeHandler(profiles)
    a = [event("A", "a1", "ada", 100, "order", revenue=10)]
    b = [
        event("B", "b1", "ada-phone", 200, "order", revenue=30),
        event("B", "b2", "ada-phone", 210, "order", revenue=5),
    ]
    for resolved in a + b:
        await profiles.apply(resolved)
    assert entries((await profiles.store.latest("B")).profile) == daily(b)

    merge = identity_changed_pb2.IdentityMerged(merge_id="merge-s", survivor_profile_id="A", merged_profile_ids=["B"])
    await merges.merged(merge, DELIVERY)
    assert entries((await profiles.store.latest("A")).profile) == daily(a + b), "the sum of both sides"
    later = event("A", "a2", "ada", 300, "order", revenue=7)
    await profiles.apply(later)
    assert entries((await profiles.store.latest("A")).profile) == daily([*a, *b, later])

    split = identity_changed_pb2.IdentitySplit(
        merge_id="merge-s", split_id="split-s", survivor_profile_id="A", restored_profile_ids=["B"]
    )
    await merges.split(split, DELIVERY)
    assert entries((await profiles.store.latest("A")).profile) == daily([*a, later])
    assert entries((await profiles.store.latest("B")).profile) == daily(b)
