"""Folding events into a profile, and the history kept of it: pure logic."""

from datetime import datetime, timezone

from google.protobuf import timestamp_pb2

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.profile.v1 import profile_pb2
from profile_service import history
from profile_service.fold import FoldRules, fold

NOW = datetime(2026, 11, 23, tzinfo=timezone.utc)
DAY = 86400
BASE = int(NOW.timestamp()) - 10 * DAY


def event(
    seconds: int, source: str = "web", type_=event_pb2.EVENT_TYPE_IDENTIFY, **traits
) -> resolved_pb2.ResolvedEvent:
    e = event_pb2.Event(
        type=type_,
        user_id="u",
        message_id=f"m{seconds}",
        timestamp=timestamp_pb2.Timestamp(seconds=BASE + seconds),
        source_id=source,
    )
    e.traits.update(traits)
    return resolved_pb2.ResolvedEvent(
        profile_id="p", event=e, identifiers=[identity_pb2.Identifier(type="user_id", value="u")]
    )


def folded(*events, rules=FoldRules()) -> profile_pb2.Profile:
    profile = profile_pb2.Profile(profile_id="p")
    for e in events:
        fold(profile, e, rules, NOW)
    return profile


def test_a_later_event_overwrites_a_trait_and_the_diff_shows_old_and_new():
    before = folded(event(100, plan="free"))
    after = folded(event(100, plan="free"), event(200, plan="pro"))
    [plan] = [c for c in history.diff(before, after) if c.path == "traits.plan"]
    assert plan.old_value.string_value == "free" and plan.new_value.string_value == "pro"
    assert after.event_count == 2


def test_an_older_event_arriving_late_never_overwrites_a_newer_value():
    profile = folded(event(200, plan="pro"), event(100, plan="free", email="a@example.com"))
    assert profile.traits["plan"].value.string_value == "pro"
    assert profile.traits["email"].value.string_value == "a@example.com"
    assert profile.first_seen.seconds == BASE + 100 and profile.last_seen.seconds == BASE + 200


def test_at_the_same_event_time_the_stronger_source_wins():
    rules = FoldRules(source_priority=("crm", "web"))
    assert (
        folded(event(100, "crm", plan="gold"), event(100, "web", plan="free"), rules=rules)
        .traits["plan"]
        .value.string_value
        == "gold"
    )
    assert (
        folded(event(100, "web", plan="free"), event(100, "crm", plan="gold"), rules=rules)
        .traits["plan"]
        .value.string_value
        == "gold"
    )


def test_identities_groups_and_daily_counters_are_kept():
    group = event(300, type_=event_pb2.EVENT_TYPE_GROUP, name="Acme")
    group.event.group_id = "acme"
    order = event(400, type_=event_pb2.EVENT_TYPE_TRACK)
    order.event.event = "Order Completed"
    order.event.properties.update({"revenue": 42.5})
    profile = folded(event(100), group, order, order)
    assert profile.identities["user_id:u"].first_seen.seconds == BASE + 100
    assert profile.groups["acme"].traits.fields["name"].string_value == "Acme"
    assert "name" not in profile.traits, "group traits belong to the group"
    day = datetime.fromtimestamp(BASE + 400, tz=timezone.utc).strftime("%Y-%m-%d")
    counter = profile.daily_counters[f"{day}|Order Completed"]
    assert (counter.count, counter.revenue) == (2, 85.0)


def test_counters_older_than_the_retention_are_dropped():
    profile = folded(event(0), rules=FoldRules(counter_days=5))
    assert profile.daily_counters == {} or all(k.split("|")[0] >= "2026-11-19" for k in profile.daily_counters)


def test_a_version_rebuilt_from_a_full_state_and_deltas_equals_the_profile():
    profiles, snapshots, full = [profile_pb2.Profile(profile_id="p")], [], []
    for i, e in enumerate([event(100, plan="free"), event(200, plan="pro", email="a@x"), event(300, email="b@x")]):
        new = profile_pb2.Profile()
        new.CopyFrom(profiles[-1])
        fold(new, e, FoldRules(), NOW)
        new.version = i + 1
        changes = history.diff(profiles[-1], new)
        is_full = i == 0
        snapshots.append(
            profile_pb2.Snapshot(
                version=i + 1, changes=changes, profile=new if is_full else history.delta(new, changes)
            )
        )
        full.append(is_full)
        profiles.append(new)
    assert history.replay(snapshots, full) == profiles[-1]
    assert history.replay(snapshots[:2], full[:2]) == profiles[2]
