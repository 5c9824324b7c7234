"""Folding events into a profile: pure logic."""

from google.protobuf import timestamp_pb2

from mosaic.events.v1 import event_pb2
from mosaic.profile.v1 import profile_pb2
from profile_service.fold import fold


def identify(seconds: int, message_id: str = "m", **traits) -> event_pb2.Event:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id="u", message_id=message_id,
                            timestamp=timestamp_pb2.Timestamp(seconds=seconds), source_id="web")
    event.traits.update(traits)
    return event


def test_a_later_event_overwrites_a_trait_and_reports_old_and_new():
    profile = profile_pb2.Profile(profile_id="p")
    fold(profile, identify(100, plan="free"))
    changes = fold(profile, identify(200, plan="pro"))
    [plan] = [c for c in changes if c.path == "traits.plan"]
    assert plan.old_value.string_value == "free" and plan.new_value.string_value == "pro"
    assert profile.traits["plan"].value.string_value == "pro"
    assert profile.version == 2 and profile.event_count == 2


def test_an_older_event_arriving_late_never_overwrites_a_newer_value():
    profile = profile_pb2.Profile(profile_id="p")
    fold(profile, identify(200, plan="pro"))
    changes = fold(profile, identify(100, plan="free", email="a@example.com"))
    assert profile.traits["plan"].value.string_value == "pro"
    assert profile.traits["email"].value.string_value == "a@example.com"
    assert "traits.plan" not in {c.path for c in changes}
    assert profile.first_seen.seconds == 100 and profile.last_seen.seconds == 200


def test_the_trait_keeps_the_time_and_source_that_set_it():
    profile = profile_pb2.Profile(profile_id="p")
    fold(profile, identify(300, plan="pro"))
    assert profile.traits["plan"].set_at.seconds == 300
    assert profile.traits["plan"].source_id == "web"
