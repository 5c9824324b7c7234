"""Identifiers taken from an event, normalised, blocked values set aside, in priority order.

Taken: `userId`, `anonymousId`, `traits.email`, `traits.phone`, `context.device.id`,
`context.externalIds[]` and the trait paths the rules name. E-mails are lower-cased and
phones put in E.164 (with `phonenumbers`), as ingestion does, so the same person written two
ways is one identifier.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import phonenumbers
from google.protobuf import struct_pb2

from identity_service.rules import Rules
from mosaic.events.v1 import event_pb2
from mosaic.identity.v1 import identity_pb2

Identifier = identity_pb2.Identifier


@dataclass(frozen=True)
class Rejected:
    """An identifier an event carried that is never linked, and why."""

    identifier: identity_pb2.Identifier
    reason: str


def key(identifier: identity_pb2.Identifier) -> tuple[str, str]:
    return identifier.type, identifier.value


def normalise(identifier_type: str, value: str, phone_region: str = "US") -> str:
    """The normalised value, or '' when it cannot be one (an unparsable phone number)."""
    value = value.strip()
    if identifier_type == "email":
        return value.lower()
    if identifier_type == "phone":
        try:
            number = phonenumbers.parse(value, None if value.startswith("+") else phone_region)
        except phonenumbers.NumberParseException:
            return ""
        if not phonenumbers.is_possible_number(number):
            return ""
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return value


def ordered(identifiers: Iterable[identity_pb2.Identifier], rules: Rules) -> list[identity_pb2.Identifier]:
    """Highest priority first; ties by type and value so every replica sees the same order."""
    return sorted(identifiers, key=lambda i: (rules.rank(i.type), i.type, i.value))


def extract(
    event: event_pb2.Event, rules: Rules, phone_region: str = "US"
) -> tuple[list[identity_pb2.Identifier], list[Rejected]]:
    """The event's usable identifiers in priority order, and those set aside with the reason."""
    raw: list[tuple[str, str]] = []
    if event.user_id:
        raw.append(("user_id", event.user_id))
    if event.anonymous_id:
        raw.append(("anonymous_id", event.anonymous_id))
    traits = event.traits.fields
    for name in ("email", "phone"):
        if name in traits:
            raw.append((name, _text(traits[name])))
    device = _path(event.context, "device.id")
    if device is not None:
        raw.append(("device_id", _text(device)))
    external = event.context.fields.get("externalIds")
    if external is not None:
        for item in external.list_value.values:
            fields = item.struct_value.fields
            id_type = _text(fields["type"]) if "type" in fields else ""
            collection = _text(fields["collection"]) if "collection" in fields else ""
            if id_type and "id" in fields:
                # `users` is the Segment default collection; others keep their own namespace.
                name = id_type if collection in ("", "users") else f"{collection}:{id_type}"
                raw.append((name.lower(), _text(fields["id"])))
    for path, id_type in rules.trait_identifiers:
        found = _path(event.traits, path)
        if found is not None:
            raw.append((id_type, _text(found)))

    usable: dict[tuple[str, str], identity_pb2.Identifier] = {}
    rejected: list[Rejected] = []
    for id_type, value in raw:
        normalised = normalise(id_type, value, phone_region)
        identifier = Identifier(type=id_type, value=normalised or value.strip())
        if not value.strip():
            continue
        if not normalised:
            rejected.append(Rejected(identifier, f"not a valid {id_type}"))
            continue
        reason = rules.blocked_reason(id_type, normalised)
        if reason:
            rejected.append(Rejected(identifier, reason))
            continue
        usable[key(identifier)] = identifier
    return ordered(usable.values(), rules), rejected


def _text(value: struct_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        return str(int(number)) if number.is_integer() else str(number)
    if kind == "bool_value":
        return str(value.bool_value).lower()
    return ""  # null, lists and objects are not identifiers


def _path(struct: struct_pb2.Struct, path: str) -> struct_pb2.Value | None:
    """The value at a dotted path of a Struct, or None."""
    current: struct_pb2.Value | None = None
    fields: Mapping[str, struct_pb2.Value] = struct.fields
    for part in path.split("."):
        if part not in fields:
            return None
        current = fields[part]
        fields = current.struct_value.fields if current.WhichOneof("kind") == "struct_value" else {}
    return current
