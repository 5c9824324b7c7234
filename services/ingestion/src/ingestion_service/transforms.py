"""A source's transforms: rename events and fields, drop fields, normalise e-mail and phone.

Pure logic on `Event`s. Paths are dotted and start with `properties`, `traits` or `context`
(`traits.address.city`). A transform whose field is absent does nothing; one that cannot do
its work (a phone number that does not parse) raises `TransformError`, which the tracking
plan's `invalid` action decides about.
"""

from __future__ import annotations

from typing import Any

import phonenumbers
from google.protobuf import struct_pb2

from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import source_pb2
from mosaic.platform.errors import InvalidArgument

ROOTS = ("properties", "traits", "context")
_MISSING = object()


class TransformError(Exception):
    """A transform could not do its work on one event."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def check(transforms: list[source_pb2.Transform], prefix: str = "transforms") -> None:
    """Refuse a transform list that could never work, naming the transform and the rule."""
    for index, transform in enumerate(transforms):
        where = f"{prefix}[{index}]"
        kind = transform.WhichOneof("action")
        if kind is None:
            raise InvalidArgument(where, "must have an action")
        action = getattr(transform, kind)
        if kind == "rename_event":
            if not transform.event or not action.to_name:
                raise InvalidArgument(f"{where}.rename_event", "needs the event to rename and to_name")
        elif kind == "rename_field":
            _check_path(action.from_path, f"{where}.rename_field.from_path")
            _check_path(action.to_path, f"{where}.rename_field.to_path")
        else:
            _check_path(action.path, f"{where}.{kind}.path")
        if kind == "normalise_phone" and action.default_region:
            if action.default_region.upper() not in phonenumbers.SUPPORTED_REGIONS:
                raise InvalidArgument(
                    f"{where}.normalise_phone.default_region", "must be an ISO 3166 region phonenumbers knows"
                )


def _check_path(path: str, field: str) -> None:
    parts = path.split(".")
    if len(parts) < 2 or parts[0] not in ROOTS or not all(parts):
        raise InvalidArgument(field, f"must be a dotted path starting with {', '.join(ROOTS)}, got {path!r}")


def apply(transforms: list[source_pb2.Transform], event: event_pb2.Event) -> None:
    """Apply the transforms in order, in place."""
    for transform in transforms:
        if transform.event and not (event.type == event_pb2.EVENT_TYPE_TRACK and event.event == transform.event):
            continue
        kind = transform.WhichOneof("action")
        action = getattr(transform, kind)
        if kind == "rename_event":
            event.event = action.to_name
        elif kind == "rename_field":
            value = _pop(event, action.from_path)
            if value is not _MISSING:
                _put(event, action.to_path, value)
        elif kind == "drop_field":
            _pop(event, action.path)
        elif kind == "normalise_email":
            _rewrite(event, action.path, normalise_email)
        elif kind == "normalise_phone":
            _rewrite(event, action.path, lambda value, action=action: normalise_phone(value, action.default_region))


def normalise_email(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("is not a string")
    return value.strip().lower()


def normalise_phone(value: Any, default_region: str = "") -> str:
    """The number in E.164; a number without a country code is read in `default_region`."""
    if isinstance(value, float) and value.is_integer():
        value = str(int(value))  # a number that lost its leading + on the way through JSON
    if not isinstance(value, str):
        raise ValueError("is not a string")
    try:
        number = phonenumbers.parse(value, default_region.upper() or None)
    except phonenumbers.NumberParseException as error:
        raise ValueError(f"is not a phone number: {error}") from None
    if not phonenumbers.is_possible_number(number):
        raise ValueError("is not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _rewrite(event: event_pb2.Event, path: str, normalise) -> None:
    parent, key = _parent(event, path, create=False)
    if parent is None or key not in parent:
        return
    try:
        parent[key] = normalise(_plain(parent[key]))
    except ValueError as error:
        raise TransformError(path, str(error)) from None


def _parent(event: event_pb2.Event, path: str, create: bool) -> tuple[struct_pb2.Struct | None, str]:
    root, *middle, key = path.split(".")
    struct = getattr(event, root)
    for name in middle:
        if name in struct and isinstance(struct[name], struct_pb2.Struct):
            struct = struct[name]
        elif create:
            struct = struct.get_or_create_struct(name)
        else:
            return None, key
    return struct, key


def _pop(event: event_pb2.Event, path: str) -> Any:
    parent, key = _parent(event, path, create=False)
    if parent is None or key not in parent:
        return _MISSING
    value = _plain(parent[key])
    del parent[key]
    return value


def _put(event: event_pb2.Event, path: str, value: Any) -> None:
    parent, key = _parent(event, path, create=True)
    assert parent is not None
    parent[key] = value


def _plain(value: Any) -> Any:
    """A Struct's value as plain Python (nested Structs and lists as dicts and lists)."""
    if isinstance(value, struct_pb2.Struct):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, struct_pb2.ListValue):
        return [_plain(v) for v in value]
    return value
