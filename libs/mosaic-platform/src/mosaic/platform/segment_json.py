"""The Segment tracking API's JSON messages, read into `Event`s: the one mapping that
ingestion's HTTP API and `mosaic import` (the CLI) both use.

Pure logic. Every rule a message breaks raises `InvalidArgument` naming the field in the
Segment spelling (`userId`, `properties`...), so an HTTP client is told what it sent wrong.
Null is the same as absent (the SDKs send `"anonymousId": null`). Top-level fields the spec
does not define are ignored, as Segment does, except `category` (page and screen, kept in
`properties`) and `channel` (kept in `context`). RudderStack's SDKs send an identify's traits
as `context.traits` only; they become the event's traits when it has none of its own.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import orjson
from google.protobuf import struct_pb2, timestamp_pb2

from mosaic.events.v1 import event_pb2
from mosaic.platform import limits
from mosaic.platform.errors import InvalidArgument

T = event_pb2  # EVENT_TYPE_* as module-level ints: the enum wrapper's lookup costs 0.6 µs each
TYPES = {
    "track": T.EVENT_TYPE_TRACK,
    "identify": T.EVENT_TYPE_IDENTIFY,
    "page": T.EVENT_TYPE_PAGE,
    "screen": T.EVENT_TYPE_SCREEN,
    "group": T.EVENT_TYPE_GROUP,
    "alias": T.EVENT_TYPE_ALIAS,
}
TYPE_NAMES = {value: name for name, value in TYPES.items()}
# Segment name → Event field, for the fields that are strings (ids may also be integers).
STRINGS = {
    "messageId": "message_id",
    "userId": "user_id",
    "anonymousId": "anonymous_id",
    "event": "event",
    "name": "name",
    "previousId": "previous_id",
    "groupId": "group_id",
}
IDS = frozenset({"userId", "anonymousId", "previousId", "groupId"})
LIMITED = IDS | {"messageId"}  # the strings that become NATS headers and store keys
OBJECTS = {"properties": "properties", "traits": "traits", "context": "context", "integrations": "integrations"}
TIMES = ("timestamp", "originalTimestamp", "sentAt")
EXTRAS = ("category", "channel")  # kept in properties and context (see _keep_extras)
# Every top-level name a message is read from (a CSV column so named is not a property).
TOP_LEVEL = ("type", *STRINGS, *OBJECTS, *TIMES, *EXTRAS)
# Struct values nest three protobuf levels per JSON level, and the consumers' parser stops at
# 100: deeper JSON would be stored but could never be read again.
MAX_DEPTH = limits.MAX_DEPTH
MAX_ID_LENGTH = limits.MAX_ID_LENGTH
NUMBER_RULE = "must hold numbers a double can hold (magnitude at most 1.8e308)"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def loads(body: bytes) -> Any:
    """Parse a JSON body; raises InvalidArgument("body", ...) when it is not UTF-8 JSON."""
    try:
        return orjson.loads(body)  # strict: UTF-8, no NaN, no lone surrogates, depth-limited
    except orjson.JSONDecodeError as error:
        refusal, where = error.msg, f"line {error.lineno} column {error.colno}"
    # Limits first, in our words: the slow parser would say them in Python's (recursion
    # depth, sys.set_int_max_str_digits) or not at all (1e400 is infinity to it).
    if "depth limit" in refusal:
        raise InvalidArgument("body", f"must nest at most {MAX_DEPTH} levels")
    if "infinity" in refusal:
        raise InvalidArgument("body", f"{NUMBER_RULE}; the number at {where} is not")
    # The slow parser only runs on a bad body: its message names the byte or the line and column.
    try:
        json.loads(body.decode("utf-8"), parse_constant=_no_constant, parse_int=_bounded_int)
    except UnicodeDecodeError as error:
        raise InvalidArgument("body", f"must be UTF-8; byte {error.start} is not") from None
    except json.JSONDecodeError as error:
        raise InvalidArgument(
            "body", f"must be JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise InvalidArgument("body", f"must nest at most {MAX_DEPTH} levels") from None
    except ValueError as error:
        raise InvalidArgument("body", f"must be JSON: {error}") from None
    raise InvalidArgument("body", f"must be JSON: {refusal}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _bounded_int(digits: str) -> int:
    if len(digits) > 310:  # past a double's range, and past Python's own digit limit at 4,300
        raise ValueError(NUMBER_RULE)
    return int(digits)


def to_event(message: Any, type_name: str | None = None, defaults: dict[str, Any] | None = None) -> event_pb2.Event:
    """One Segment message as an Event. `type_name` is the endpoint's type (None for a batch,
    where each message names its own); `defaults` are the batch's own `context`,
    `integrations` and `sentAt`, which the message's fields override."""
    if not isinstance(message, dict):
        raise InvalidArgument("", "must be a JSON object")
    event = event_pb2.Event()
    kind = message.get("type") if type_name is None else type_name
    if kind is None:
        raise InvalidArgument("type", "is required")
    if not isinstance(kind, str) or kind not in TYPES:
        raise InvalidArgument("type", f"must be one of {', '.join(TYPES)}, got {_show(kind)}")
    event.type = TYPES[kind]
    for key, field in STRINGS.items():
        value = message.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, int) and not isinstance(value, bool) and key in IDS:
            value = str(value)  # Segment accepts numeric ids and stores them as strings
        if not isinstance(value, str):
            raise InvalidArgument(key, f"must be a string, got {_show(value)}")
        if len(value) > MAX_ID_LENGTH and key in LIMITED:
            raise InvalidArgument(key, f"must be at most {MAX_ID_LENGTH} characters")
        try:
            setattr(event, field, value)
        except UnicodeEncodeError:
            raise InvalidArgument(key, "must be valid Unicode (a lone surrogate escape is not)") from None
    for key, field in OBJECTS.items():
        value = message.get(key)
        default = defaults.get(key) if defaults else None
        if value is None and default is None:
            continue
        if value is not None and not isinstance(value, dict):
            raise InvalidArgument(key, f"must be an object, got {_show(value)}")
        if default is not None:
            value = {**default, **(value or {})}
        assert isinstance(value, dict)  # given as an object, or the default
        try:
            _fill(getattr(event, field), value, 1)
        except _TooDeep:
            raise InvalidArgument(key, f"must nest at most {MAX_DEPTH} levels") from None
        except _BadKey as bad:
            raise InvalidArgument(
                key, f"key {limits.shown(str(bad))} must not contain control characters (NUL, CR, LF...)"
            ) from None
        except (UnicodeEncodeError, ValueError, TypeError) as error:
            raise InvalidArgument(key, f"cannot be stored: {error}") from None
    _timestamp(event.timestamp, message, "timestamp") or _timestamp(event.timestamp, message, "originalTimestamp")
    if not _timestamp(event.sent_at, message, "sentAt") and defaults and defaults.get("sentAt") is not None:
        _timestamp(event.sent_at, defaults, "sentAt")
    _keep_extras(event, message)
    return event


class _TooDeep(Exception):
    pass


class _BadKey(Exception):
    pass


def _fill(struct: struct_pb2.Struct, mapping: dict[str, Any], depth: int) -> None:
    """Struct.update, inlined for the hot path (a third of the time), with the depth limit."""
    if depth > MAX_DEPTH:
        raise _TooDeep
    fields = struct.fields
    for key, value in mapping.items():
        if limits.has_control(key):
            raise _BadKey(key)
        target = fields[key]
        kind = type(value)
        if kind is str:
            target.string_value = value
        elif kind is int or kind is float:
            target.number_value = value
        elif kind is bool:
            target.bool_value = value
        elif value is None:
            target.null_value = struct_pb2.NULL_VALUE
        elif kind is dict:
            target.struct_value.SetInParent()  # an empty object is still an object
            _fill(target.struct_value, value, depth + 1)
        else:
            target.list_value.SetInParent()
            _fill_list(target.list_value, value, depth + 1)


def _fill_list(values: struct_pb2.ListValue, items: list[Any], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _TooDeep
    for item in items:
        kind = type(item)
        if kind is dict:
            child = values.values.add().struct_value
            child.SetInParent()
            _fill(child, item, depth + 1)
        elif kind is list:
            child_list = values.values.add().list_value
            child_list.SetInParent()
            _fill_list(child_list, item, depth + 1)
        else:
            values.append(item)


def _timestamp(target: timestamp_pb2.Timestamp, message: dict[str, Any], key: str) -> bool:
    value = message.get(key)
    if value is None:
        return False
    if not isinstance(value, str):
        raise InvalidArgument(key, f"must be an ISO 8601 date-time string, got {_show(value)}")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(key, f"must be an ISO 8601 date-time, got {_show(value)}") from None
    if when.tzinfo is None:
        raise InvalidArgument(key, "must have a time zone (Z or an offset)")
    since = when - _EPOCH  # datetime's own arithmetic: Timestamp.FromDatetime is slower
    target.seconds = since.days * 86400 + since.seconds
    target.nanos = since.microseconds * 1000
    return True


def _keep_extras(event: event_pb2.Event, message: dict[str, Any]) -> None:
    category = message.get("category")
    if isinstance(category, str) and category and event.type in (T.EVENT_TYPE_PAGE, T.EVENT_TYPE_SCREEN):
        if "category" not in event.properties:
            event.properties["category"] = category
    channel = message.get("channel")
    if isinstance(channel, str) and channel and "channel" not in event.context:
        event.context["channel"] = channel
    if event.type == T.EVENT_TYPE_IDENTIFY and not event.traits.fields and "traits" in event.context:
        traits = event.context["traits"]
        if isinstance(traits, struct_pb2.Struct):
            event.traits.CopyFrom(traits)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
