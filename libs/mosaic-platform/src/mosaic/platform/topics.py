"""The topics of the mesh: one JetStream stream per topic, one subject per partition.

A topic's subjects are `<topic>.<partition>`; the partition is a stable hash of the key
(profile id after identity, the person's first identifier before), so all messages of one key
land on one subject, in order, and each replica consumes a fixed share of the partitions.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from google.protobuf.message import Message

from mosaic.events.v1 import (
    consent_changed_pb2,
    delivery_outcome_pb2,
    event_pb2,
    profile_updated_pb2,
    resolved_pb2,
    segment_membership_pb2,
)

DAY = 24 * 3600.0


@dataclass(frozen=True)
class Topic:
    """A kind of message on the bus."""

    name: str
    stream: str
    message: type[Message]
    max_age: float = 7 * DAY
    duplicate_window: float = 120.0

    def subject(self, partition: int) -> str:
        return f"{self.name}.{partition}"

    @property
    def wildcard(self) -> str:
        return f"{self.name}.*"


def partition_of(key: str, partitions: int) -> int:
    """The partition of a key: CRC-32, so every language and replica agrees."""
    return zlib.crc32(key.encode()) % partitions


EVENTS_RAW = Topic("events.raw", "EVENTS_RAW", event_pb2.Event, duplicate_window=DAY)
EVENTS_RESOLVED = Topic("events.resolved", "EVENTS_RESOLVED", resolved_pb2.ResolvedEvent)
PROFILE_UPDATED = Topic("profile.updated", "PROFILE_UPDATED", profile_updated_pb2.ProfileUpdated)
SEGMENT_MEMBERSHIP = Topic(
    "segment.membership", "SEGMENT_MEMBERSHIP", segment_membership_pb2.SegmentMembershipChanged
)
CONSENT_CHANGED = Topic("consent.changed", "CONSENT_CHANGED", consent_changed_pb2.ConsentChanged)
DELIVERY_OUTCOME = Topic("delivery.outcome", "DELIVERY_OUTCOME", delivery_outcome_pb2.DeliveryOutcome)

ALL = (EVENTS_RAW, EVENTS_RESOLVED, PROFILE_UPDATED, SEGMENT_MEMBERSHIP, CONSENT_CHANGED, DELIVERY_OUTCOME)

# Poison messages are kept here, by consuming service, with the reason in a header.
DEAD_LETTER_STREAM = "DEAD_LETTERS"
DEAD_LETTER_SUBJECTS = "deadletter.>"
