"""The Segment envelope: pure logic."""

import pytest
from google.protobuf import timestamp_pb2

from ingestion_service import envelope
from mosaic.events.v1 import event_pb2
from mosaic.platform.errors import InvalidArgument

T = event_pb2.EventType
NOW = timestamp_pb2.Timestamp(seconds=1_000_000)


@pytest.mark.parametrize(
    ("event", "field", "rule"),
    [
        (event_pb2.Event(user_id="u"), "type", "is required"),
        (event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY), "user_id", "user_id or anonymous_id is required"),
        (event_pb2.Event(type=T.EVENT_TYPE_TRACK, user_id="u"), "event", "is required for track"),
        (event_pb2.Event(type=T.EVENT_TYPE_ALIAS, user_id="u"), "previous_id", "is required for alias"),
        (event_pb2.Event(type=T.EVENT_TYPE_GROUP, anonymous_id="a"), "group_id", "is required for group"),
        (
            event_pb2.Event(type=T.EVENT_TYPE_TRACK, user_id="u", event="x" * 33000),
            "event",
            "must be at most 32768 bytes",
        ),
        (
            event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u", message_id="a\r\nb"),
            "message_id",
            "must be at most 512 printable",
        ),
        (
            event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u", message_id="m" * 513),
            "message_id",
            "must be at most 512 printable",
        ),
    ],
)
def test_an_invalid_event_names_the_field_and_rule(event, field, rule):
    with pytest.raises(InvalidArgument) as caught:
        envelope.prepare(event, "web", NOW)
    assert caught.value.field == field
    assert caught.value.rule.startswith(rule)


Stamp = timestamp_pb2.Timestamp
YEAR_9999 = 253402214400
YEAR_0001 = -62135596800


@pytest.mark.parametrize(
    ("event", "field", "rule"),
    [
        # The same rules as the HTTP door's, for events that came in over gRPC.
        (event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u" * 20000), "user_id", "must be at most 512 characters"),
        (
            event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="a\x00b"),
            "user_id",
            "must not contain control characters",
        ),
        (event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, anonymous_id="a\nb"), "anonymous_id", "must not contain control"),
        (
            event_pb2.Event(type=T.EVENT_TYPE_TRACK, user_id="u", event="Clicked\r\nX-Injected: 1"),
            "event",
            "must not contain",
        ),
        (event_pb2.Event(type=T.EVENT_TYPE_GROUP, user_id="u", group_id="g" * 513), "group_id", "must be at most 512"),
        # What identity would never link: refused here rather than dead-lettered there.
        (
            event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="   "),
            "user_id",
            "user_id or anonymous_id must be a real id",
        ),
        (
            event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="null", anonymous_id="0"),
            "user_id",
            "user_id or anonymous_id must be a real",
        ),
        (
            event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, anonymous_id="Undefined"),
            "user_id",
            "user_id or anonymous_id must be a real",
        ),
        # Times every later stage can fold, and a skew correction that cannot leave that range.
        (
            event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u", timestamp=Stamp(seconds=YEAR_9999)),
            "timestamp",
            "must be between 1900-01-01 and 2200-01-01",
        ),
        (
            event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u", timestamp=Stamp(seconds=2**62)),
            "timestamp",
            "must be between",
        ),
        (
            event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u", sent_at=Stamp(seconds=YEAR_0001)),
            "sent_at",
            "must be between",
        ),
        (
            event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u", timestamp=Stamp(seconds=1, nanos=-5)),
            "timestamp.nanos",
            "must be between 0 and",
        ),
        (
            event_pb2.Event(
                type=T.EVENT_TYPE_IDENTIFY,
                user_id="u",
                timestamp=Stamp(seconds=7_000_000_000),
                sent_at=Stamp(seconds=-2_000_000_000),
            ),
            "sent_at",
            "is too far from the time received",
        ),
    ],
)
def test_the_rules_both_doors_share_name_the_field(event, field, rule):
    with pytest.raises(InvalidArgument) as caught:
        envelope.prepare(event, "web", NOW)
    assert caught.value.field == field
    assert caught.value.rule.startswith(rule)


def test_a_message_id_is_generated_when_absent_and_kept_when_present():
    generated = envelope.prepare(event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u"), "web", NOW)
    kept = envelope.prepare(event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u", message_id="m-1"), "web", NOW)
    assert len(generated.message_id) == 36 and kept.message_id == "m-1"
    assert generated.source_id == "web" and generated.received_at == NOW and generated.timestamp == NOW


def test_the_dedupe_id_is_the_source_and_the_message_id():
    event = envelope.prepare(event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u", message_id="m-1"), "web", NOW)
    assert envelope.dedupe_id(event) == "web:m-1"


def test_the_event_time_is_corrected_by_the_client_clock_skew():
    # The client's clock is 60 s behind: it sent at 940 000 by its clock, we received at 1 000 000.
    event = event_pb2.Event(
        type=T.EVENT_TYPE_TRACK,
        user_id="u",
        event="Clicked",
        timestamp=timestamp_pb2.Timestamp(seconds=999_930),
        sent_at=timestamp_pb2.Timestamp(seconds=999_940),
    )
    envelope.prepare(event, "web", NOW)
    assert event.timestamp.seconds == 999_990
    assert event.original_timestamp.seconds == 999_930  # the client's own, as Segment's originalTimestamp


def test_without_sent_at_the_client_time_is_both_timestamp_and_original_timestamp():
    event = event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u", timestamp=timestamp_pb2.Timestamp(seconds=999_930))
    envelope.prepare(event, "web", NOW)
    assert event.timestamp.seconds == event.original_timestamp.seconds == 999_930


def test_without_a_client_time_there_is_no_original_timestamp_whatever_the_caller_set():
    event = event_pb2.Event(
        type=T.EVENT_TYPE_IDENTIFY, user_id="u", original_timestamp=timestamp_pb2.Timestamp(seconds=5)
    )
    envelope.prepare(event, "web", NOW)
    assert event.timestamp == NOW and not event.HasField("original_timestamp")


def test_an_invalid_event_gets_no_original_timestamp():
    event = event_pb2.Event(
        type=T.EVENT_TYPE_TRACK,
        user_id="u",
        timestamp=timestamp_pb2.Timestamp(seconds=999_930),
        sent_at=timestamp_pb2.Timestamp(seconds=999_940),
    )
    with pytest.raises(InvalidArgument):
        envelope.prepare(event, "web", NOW)  # no event name
    assert not event.HasField("original_timestamp") and event.timestamp.seconds == 999_930


def _struct_event(field: str, value) -> event_pb2.Event:
    event = event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u")
    getattr(event, field).update(value)
    return event


def _deep(levels: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"inner": value}
    return value


@pytest.mark.parametrize(
    ("event", "field", "rule"),
    [
        (_struct_event("properties", {"a\x00b": 1}), "properties", "key 'a\\x00b' must not contain control characters"),
        (_struct_event("traits", {"plan": {"x\ny": 1}}), "traits", "key 'x\\ny' must not contain"),
        (_struct_event("properties", {"n": float("inf")}), "properties", "must hold finite numbers"),
        (_struct_event("context", {"n": [float("nan")]}), "context", "must hold finite numbers"),
        (_struct_event("properties", _deep(25)), "properties", "must nest at most 24 levels"),
    ],
)
def test_the_objects_of_an_event_from_grpc_follow_the_json_rules(event, field, rule):
    with pytest.raises(InvalidArgument) as caught:
        envelope.prepare(event, "web", NOW)
    assert caught.value.field == field and caught.value.rule.startswith(rule)


def test_a_real_id_beside_a_placeholder_is_enough_and_24_levels_are_allowed():
    event = _struct_event("properties", _deep(24))
    event.anonymous_id = "null"
    envelope.prepare(event, "web", NOW)
    assert event.message_id and event.source_id == "web"


def test_a_long_rule_echoes_at_most_a_bounded_part_of_the_value():
    event = event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="0" * 500)
    with pytest.raises(InvalidArgument) as caught:
        envelope.prepare(event, "web", NOW)
    assert "(500 characters)" in caught.value.rule and len(caught.value.rule) < 300
