"""The Segment spec's envelope: required fields per type, message ids, clock-skew correction.

Pure logic: `prepare` returns the event ready for the bus, or raises InvalidArgument naming
the field and the rule.
"""

from __future__ import annotations

import uuid

from google.protobuf import timestamp_pb2

from mosaic.events.v1 import event_pb2
from mosaic.platform.errors import InvalidArgument

T = event_pb2  # EVENT_TYPE_* as module-level ints: the enum wrapper's lookup costs 0.6 µs each
MAX_BATCH = 2500
MAX_EVENT_BYTES = 32 * 1024
MAX_MESSAGE_ID = 512
# type → (field, rule) the type requires beyond a user or anonymous id
REQUIRED = {
    T.EVENT_TYPE_TRACK: ("event", "is required for track"),
    T.EVENT_TYPE_ALIAS: ("previous_id", "is required for alias"),
    T.EVENT_TYPE_GROUP: ("group_id", "is required for group"),
}


def prepare(event: event_pb2.Event, source_id: str, received_at: timestamp_pb2.Timestamp) -> event_pb2.Event:
    """Validate and complete one event in place (message id, received_at, corrected timestamp
    and the client's own as original_timestamp)."""
    validate(event)
    if not event.message_id:
        event.message_id = str(uuid.uuid4())
    event.source_id = source_id
    event.received_at.CopyFrom(received_at)
    if not event.HasField("timestamp"):
        event.ClearField("original_timestamp")  # ingestion's to set, never the caller's
        event.timestamp.CopyFrom(received_at)
        return event
    event.original_timestamp.CopyFrom(event.timestamp)
    if event.HasField("sent_at"):
        # The client's clock may be off: shift the event time by (received_at - sent_at).
        skew = received_at.ToNanoseconds() - event.sent_at.ToNanoseconds()
        event.timestamp.FromNanoseconds(event.timestamp.ToNanoseconds() + skew)
    return event


def validate(event: event_pb2.Event) -> None:
    """The rules of the envelope, without completing anything; raises InvalidArgument."""
    if event.type == T.EVENT_TYPE_UNSPECIFIED:
        raise InvalidArgument("type", "is required")
    if event.ByteSize() > MAX_EVENT_BYTES:
        raise InvalidArgument("event", f"must be at most {MAX_EVENT_BYTES} bytes, is {event.ByteSize()}")
    if not event.user_id and not event.anonymous_id:
        raise InvalidArgument("user_id", "user_id or anonymous_id is required")
    required = REQUIRED.get(event.type)
    if required and not getattr(event, required[0]):
        raise InvalidArgument(*required)
    # The id goes into a NATS header and a store key: printable, and of a sane length.
    if len(event.message_id) > MAX_MESSAGE_ID or not event.message_id.isprintable():
        raise InvalidArgument("message_id", f"must be at most {MAX_MESSAGE_ID} printable characters")


def partition_key(event: event_pb2.Event) -> str:
    """Events of one person stay in order before identity resolves them: key by their first id."""
    return event.user_id or event.anonymous_id


def dedupe_id(event: event_pb2.Event) -> str:
    """The Nats-Msg-Id: the same message id from the same source is one event, from two sources two."""
    return f"{event.source_id}:{event.message_id}"
