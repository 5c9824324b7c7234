"""The Segment spec's envelope: required fields per type, message ids, clock-skew correction.

Pure logic: `prepare` returns the event ready for the bus, or raises InvalidArgument naming
the field and the rule.
"""

from __future__ import annotations

import uuid

from google.protobuf import timestamp_pb2

from mosaic.events.v1 import event_pb2
from mosaic.platform import limits
from mosaic.platform.errors import InvalidArgument

T = event_pb2  # EVENT_TYPE_* as module-level ints: the enum wrapper's lookup costs 0.6 µs each
MAX_BATCH = 2500
MAX_EVENT_BYTES = 32 * 1024
MAX_MESSAGE_ID = limits.MAX_ID_LENGTH
# The strings that become identifiers, NATS headers, store keys or trait names downstream.
TEXTS = ("user_id", "anonymous_id", "previous_id", "group_id", "event", "name")
STRUCTS = ("properties", "traits", "context", "integrations")
# type → (field, rule) the type requires beyond a user or anonymous id
REQUIRED = {
    T.EVENT_TYPE_TRACK: ("event", "is required for track"),
    T.EVENT_TYPE_ALIAS: ("previous_id", "is required for alias"),
    T.EVENT_TYPE_GROUP: ("group_id", "is required for group"),
}


def prepare(
    event: event_pb2.Event, source_id: str, received_at: timestamp_pb2.Timestamp, structs_checked: bool = False
) -> event_pb2.Event:
    """Validate and complete one event in place (message id, received_at, corrected timestamp
    and the client's own as original_timestamp). `structs_checked`: the caller built the
    objects under limits' rules already (the HTTP door's JSON reader does, in its one pass)."""
    validate(event, structs_checked)
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
        # Python's integers: no overflow, and the result is checked against the same range.
        skew = received_at.ToNanoseconds() - event.sent_at.ToNanoseconds()
        corrected = event.timestamp.ToNanoseconds() + skew
        if not limits.EARLIEST_SECONDS * 10**9 <= corrected < limits.LATEST_SECONDS * 10**9:
            raise InvalidArgument(
                "sent_at", f"is too far from the time received: the timestamp corrected by it {limits.TIME_RULE}"
            )
        event.timestamp.FromNanoseconds(corrected)
    return event


def validate(event: event_pb2.Event, structs_checked: bool = False) -> None:
    """The rules of the envelope, without completing anything; raises InvalidArgument."""
    if event.type == T.EVENT_TYPE_UNSPECIFIED:
        raise InvalidArgument("type", "is required")
    if event.ByteSize() > MAX_EVENT_BYTES:
        raise InvalidArgument("event", f"must be at most {MAX_EVENT_BYTES} bytes, is {event.ByteSize()}")
    if not event.user_id and not event.anonymous_id:
        raise InvalidArgument("user_id", "user_id or anonymous_id is required")
    for name in TEXTS:
        if value := getattr(event, name):
            limits.check_text(name, value)
    # Identity links neither blank ids nor placeholders: an event with nothing else is refused
    # here, by identity's own rule, rather than accepted and dead-lettered there.
    if _junk(event.user_id) and _junk(event.anonymous_id):
        shown = " and ".join(
            f"{name} {limits.shown(value)}" for name in ("user_id", "anonymous_id") if (value := getattr(event, name))
        )
        raise InvalidArgument(
            "user_id", f"user_id or anonymous_id must be a real id, not blank or a placeholder ({shown})"
        )
    required = REQUIRED.get(event.type)
    if required and not getattr(event, required[0]):
        raise InvalidArgument(*required)
    # The id goes into a NATS header and a store key: printable, and of a sane length.
    if len(event.message_id) > MAX_MESSAGE_ID or not event.message_id.isprintable():
        raise InvalidArgument("message_id", f"must be at most {MAX_MESSAGE_ID} printable characters")
    for name in ("timestamp", "sent_at"):
        if event.HasField(name):
            limits.check_timestamp(name, getattr(event, name))
    if not structs_checked:
        for name in STRUCTS:
            if event.HasField(name):
                limits.check_struct(name, getattr(event, name))


def _junk(value: str) -> bool:
    return not value or limits.junk_pattern(value) is not None


def partition_key(event: event_pb2.Event) -> str:
    """Events of one person stay in order before identity resolves them: key by their first id."""
    return event.user_id or event.anonymous_id


def dedupe_id(event: event_pb2.Event) -> str:
    """The Nats-Msg-Id: the same message id from the same source is one event, from two sources two."""
    return f"{event.source_id}:{event.message_id}"
