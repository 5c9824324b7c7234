"""The identity graph's records, as both backends read and write them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Key = tuple[str, str]


@dataclass(frozen=True)
class Claim:
    """The home profile of an identifier and how it got there."""

    profile_id: str
    event_id: str
    claimed_at: int  # ms
    source: str


@dataclass(frozen=True)
class ProfileRow:
    profile_id: str
    created_at: int  # ms: the event time of its first event
    created_by: str
    merged_into: str  # "" while it is a root
    merge_id: str
    holder: str  # "" when unlocked
    lease_until: int  # ms
    never_merge: frozenset[str]


@dataclass(frozen=True)
class Member:
    """One identifier linked to its home profile."""

    id_type: str
    id_value: str
    first_seen: int  # ms
    event_id: str
    source: str


@dataclass(frozen=True)
class Link:
    """One event's usable identifiers, as recorded for the dry run."""

    at: int
    event_id: str
    identifiers: tuple[Key, ...]


@dataclass(frozen=True)
class OutboxEntry:
    message_id: str
    topic: str
    key: str
    payload: bytes


def encode_keys(keys: Sequence[Key]) -> str:
    return "\n".join(f"{t}\t{v}" for t, v in keys)


def decode_keys(text: str) -> tuple[Key, ...]:
    return tuple(tuple(line.split("\t", 1)) for line in text.split("\n") if line)  # type: ignore[misc]
