"""The Segment envelope: pure logic."""

import pytest
from google.protobuf import timestamp_pb2

from mosaic.events.v1 import event_pb2
from mosaic.platform.errors import InvalidArgument
from ingestion_service import envelope

T = event_pb2.EventType
NOW = timestamp_pb2.Timestamp(seconds=1_000_000)


@pytest.mark.parametrize(("event", "field", "rule"), [
    (event_pb2.Event(user_id="u"), "type", "is required"),
    (event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY), "user_id", "user_id or anonymous_id is required"),
    (event_pb2.Event(type=T.EVENT_TYPE_TRACK, user_id="u"), "event", "is required for track"),
    (event_pb2.Event(type=T.EVENT_TYPE_ALIAS, user_id="u"), "previous_id", "is required for alias"),
    (event_pb2.Event(type=T.EVENT_TYPE_GROUP, anonymous_id="a"), "group_id", "is required for group"),
    (event_pb2.Event(type=T.EVENT_TYPE_TRACK, user_id="u", event="x" * 33000), "event", "must be at most 32768 bytes"),
    (event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u", message_id="a\r\nb"), "message_id", "must be at most 512 printable"),
    (event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u", message_id="m" * 513), "message_id", "must be at most 512 printable"),
])
def test_an_invalid_event_names_the_field_and_rule(event, field, rule):
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
    event = event_pb2.Event(type=T.EVENT_TYPE_TRACK, user_id="u", event="Clicked",
                            timestamp=timestamp_pb2.Timestamp(seconds=999_930),
                            sent_at=timestamp_pb2.Timestamp(seconds=999_940))
    envelope.prepare(event, "web", NOW)
    assert event.timestamp.seconds == 999_990
    assert event.original_timestamp.seconds == 999_930  # the client's own, as Segment's originalTimestamp


def test_without_sent_at_the_client_time_is_both_timestamp_and_original_timestamp():
    event = event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u", timestamp=timestamp_pb2.Timestamp(seconds=999_930))
    envelope.prepare(event, "web", NOW)
    assert event.timestamp.seconds == event.original_timestamp.seconds == 999_930


def test_without_a_client_time_there_is_no_original_timestamp_whatever_the_caller_set():
    event = event_pb2.Event(type=T.EVENT_TYPE_IDENTIFY, user_id="u", original_timestamp=timestamp_pb2.Timestamp(seconds=5))
    envelope.prepare(event, "web", NOW)
    assert event.timestamp == NOW and not event.HasField("original_timestamp")


def test_an_invalid_event_gets_no_original_timestamp():
    event = event_pb2.Event(type=T.EVENT_TYPE_TRACK, user_id="u", timestamp=timestamp_pb2.Timestamp(seconds=999_930),
                            sent_at=timestamp_pb2.Timestamp(seconds=999_940))
    with pytest.raises(InvalidArgument):
        envelope.prepare(event, "web", NOW)  # no event name
    assert not event.HasField("original_timestamp") and event.timestamp.seconds == 999_930
