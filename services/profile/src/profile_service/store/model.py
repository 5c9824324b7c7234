"""Profile's records, and the layout the service shares with the backends."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from mosaic.events.v1 import resolved_pb2
from mosaic.profile.v1 import profile_pb2
from profile_service.fold import day_text

BUCKET = 1000


# An applied-event marker must outlive any redelivery: the streams keep events 7 days.
MARKER_TTL = 14 * 86400


@dataclass
class Latest:
    """The latest profile, with the partials of its computed traits (JSON)."""

    profile: profile_pb2.Profile
    aggregates: str = "{}"
    merged_into: str = ""  # set once identity merged this profile into another


@dataclass
class StoredSnapshot:
    snapshot: profile_pb2.Snapshot
    full: bool


@dataclass
class Change:
    """What one profile's events of a batch write: the snapshots (oldest first), whose causes
    are marked applied (for `marker_ttl` seconds, or for good), the latest state after the
    last, and the events archived and identifiers indexed on the way."""

    latest: Latest
    snapshots: list[StoredSnapshot] = field(default_factory=list)
    archived: list[tuple[resolved_pb2.ResolvedEvent, str]] = field(default_factory=list)  # (event, name)
    identifiers: list[tuple[str, str]] = field(default_factory=list)  # (type, value)
    marker_ttl: int | None = None


DAY_US = 86_400_000_000


def month_of(micros: int) -> str:
    return day_text(micros // DAY_US)[:7]


def day_of(micros: int) -> str:
    return day_text(micros // DAY_US)


def erasure_key(profile_id: str) -> str:
    """What an erasure's tombstone keeps of a profile id: a hash (the id is pseudonymous, and a
    tombstone need only answer "was this one erased?")."""
    return hashlib.sha256(f"profile-erased:{profile_id}".encode()).hexdigest()
