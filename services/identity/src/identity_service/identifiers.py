"""Identifiers taken from an event, normalised, in priority order (highest first)."""

from __future__ import annotations

from mosaic.events.v1 import event_pb2
from mosaic.identity.v1 import identity_pb2

# Priority decides which profile an event joins when its identifiers point at several.
PRIORITY = ("user_id", "email", "device_id", "anonymous_id")


def normalise(identifier_type: str, value: str) -> str:
    value = value.strip()
    return value.lower() if identifier_type == "email" else value


def extract(event: event_pb2.Event) -> list[identity_pb2.Identifier]:
    found: dict[str, str] = {}
    if event.user_id:
        found["user_id"] = event.user_id
    if event.anonymous_id:
        found["anonymous_id"] = event.anonymous_id
    email = event.traits.fields.get("email")
    if email is not None and email.string_value:
        found["email"] = email.string_value
    device = event.context.fields.get("device")
    if device is not None:
        device_id = device.struct_value.fields.get("id")
        if device_id is not None and device_id.string_value:
            found["device_id"] = device_id.string_value
    identifiers = []
    for identifier_type in PRIORITY:
        value = normalise(identifier_type, found.get(identifier_type, ""))
        if value:
            identifiers.append(identity_pb2.Identifier(type=identifier_type, value=value))
    return identifiers
