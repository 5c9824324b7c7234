"""The topics of the mesh: one JetStream stream per topic, one subject per partition and key.

A topic's subjects are `<topic>.<partition>.<token>`: the partition is a stable hash of the key
(profile id after identity, the person's first identifier before), so all messages of one key
land on one partition, in order, and each replica consumes a fixed share of the partitions
(`<topic>.<partition>.*`); the token is another hash of the key (`key_token`), so the messages of
one key are found through the stream's subject index, without reading the stream: an erasure
deletes a person's messages that way (`Bus.erase_keys`).

Every topic is registered here with its payload, its key, the services that publish it and the
services that consume it; `tests/codebase/test_topic_registry.py` reads the services' code and
fails when a topic lacks either end or when the code and this registry disagree.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, replace
from typing import Any

from google.protobuf.message import Message

from mosaic.audit.v1 import audit_service_pb2
from mosaic.delivery.v1 import delivery_pb2
from mosaic.events.v1 import (
    consent_changed_pb2,
    delivery_outcome_pb2,
    event_pb2,
    identity_changed_pb2,
    privacy_request_pb2,
    profile_updated_pb2,
    resolved_pb2,
    segment_membership_pb2,
    suppression_changed_pb2,
)

DAY = 24 * 3600.0
SERVICES = ("ingestion", "identity", "profile", "segmentation", "consent", "delivery")
# The services with a privacy participant (mosaic.platform.privacy.Participant).
PARTICIPANTS = ("identity", "profile", "segmentation", "consent", "delivery")


@dataclass(frozen=True)
class Topic:
    """A kind of message on the bus: its payload, what it is partitioned by, who writes and who reads it."""

    name: str
    stream: str
    message: type[Message]
    key: str = ""
    producers: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    max_age: float = 7 * DAY
    duplicate_window: float = 120.0

    def subject(self, partition: int, key: str) -> str:
        """The subject of a message with this key on its partition."""
        return f"{self.name}.{partition}.{key_token(key)}"

    def partition_subjects(self, partition: int) -> str:
        """Every subject of one partition: what its consumer filters on."""
        return f"{self.name}.{partition}.*"

    def key_subjects(self, key: str) -> str:
        """The subjects of one key, whatever the partition count was when they were published."""
        return f"{self.name}.*.{key_token(key)}"

    @property
    def wildcard(self) -> str:
        """Every subject of the topic: the stream's."""
        return f"{self.name}.*.*"


def key_token(key: str) -> str:
    """A key as a subject token: 16 hex digits of its BLAKE2b hash (a key may hold dots or
    spaces, and the subject should not name a person in clear)."""
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def partition_of(key: str, partitions: int) -> int:
    """The partition of a key: CRC-32, so every language and replica agrees."""
    return zlib.crc32(key.encode()) % partitions


EVENTS_RAW = Topic(
    "events.raw",
    "EVENTS_RAW",
    event_pb2.Event,
    key="the event's first identifier",
    producers=("ingestion",),
    consumers=("identity",),
    duplicate_window=DAY,
)
# Produced by identity; profile forwards an event of a merged profile to its survivor and
# publishes the events of UpsertTraits.
EVENTS_RESOLVED = Topic(
    "events.resolved",
    "EVENTS_RESOLVED",
    resolved_pb2.ResolvedEvent,
    key="profile id",
    producers=("identity", "profile"),
    consumers=("profile", "consent", "delivery"),
)
PROFILE_UPDATED = Topic(
    "profile.updated",
    "PROFILE_UPDATED",
    profile_updated_pb2.ProfileUpdated,
    key="profile id",
    producers=("profile",),
    consumers=("segmentation",),
)
SEGMENT_MEMBERSHIP = Topic(
    "segment.membership",
    "SEGMENT_MEMBERSHIP",
    segment_membership_pb2.SegmentMembershipChanged,
    key="profile id",
    producers=("segmentation",),
    consumers=("delivery",),
)
# Produced by consent from its outbox (decisions, and merges/splits that move a person's
# profiles), keyed by person, carrying the person's whole consent; heard by every consent
# replica (Bus.listen) to drop its cache; consumed by profile (the consent on the profile, which
# segmentation reads through profile.updated) and by ingestion (kept by the person's ids, so
# what a purpose forbids is dropped or stripped at the door); heard by every delivery replica
# (Bus.listen) to drop the consent answers its workers read before a send.
CONSENT_CHANGED = Topic(
    "consent.changed",
    "CONSENT_CHANGED",
    consent_changed_pb2.ConsentChanged,
    key="person id",
    producers=("consent",),
    consumers=("consent", "profile", "ingestion", "delivery"),
)
# A finished job's outcome, read back by delivery's feedback (MOSAIC_DELIVERY_FEEDBACK), which
# sends it into ingestion as an engagement event.
DELIVERY_OUTCOME = Topic(
    "delivery.outcome",
    "DELIVERY_OUTCOME",
    delivery_outcome_pb2.DeliveryOutcome,
    key="profile id",
    producers=("delivery",),
    consumers=("delivery",),
)
# Identity changes, partitioned by the survivor profile id, from identity's outbox; identity's
# own replicas hear them too (Bus.listen) to drop their root caches.
IDENTITY_MERGED = Topic(
    "identity.merged",
    "IDENTITY_MERGED",
    identity_changed_pb2.IdentityMerged,
    key="survivor profile id",
    producers=("identity",),
    consumers=("identity", "profile", "segmentation", "consent"),
)
IDENTITY_SPLIT = Topic(
    "identity.split",
    "IDENTITY_SPLIT",
    identity_changed_pb2.IdentitySplit,
    key="survivor profile id",
    producers=("identity",),
    consumers=("identity", "profile", "segmentation", "consent"),
)
# People who asked to be erased, for ingestion's suppression list (keyed by profile id),
# produced by consent's PrivacyService from its outbox when an erasure is requested. The
# payload names identifiers in clear, so the stream keeps it no longer than consumers need.
SUPPRESSION_CHANGED = Topic(
    "suppression.changed",
    "SUPPRESSION_CHANGED",
    suppression_changed_pb2.SuppressionChanged,
    key="person id",
    producers=("consent",),
    consumers=("ingestion",),
)
# Privacy requests (a saga run by consent's PrivacyService), keyed by person id: consent
# publishes each request from its outbox; every service holding personal data consumes it
# (mosaic.platform.privacy.Participant) and answers with a receipt, which consent consumes and
# then erases from the stream (a receipt may carry an export or the person's identifiers).
PRIVACY_REQUESTED = Topic(
    "privacy.requested",
    "PRIVACY_REQUESTED",
    privacy_request_pb2.PrivacyRequested,
    key="person id",
    producers=("consent",),
    consumers=PARTICIPANTS,
)
PRIVACY_RECEIPT = Topic(
    "privacy.receipt",
    "PRIVACY_RECEIPT",
    privacy_request_pb2.PrivacyReceipt,
    key="person id",
    producers=PARTICIPANTS,
    consumers=("consent",),
)
# The audit log: who read or changed personal data, by answering service (the key). Every
# service writes its records (mosaic.platform.audit) and reads its own for ListAuditRecords.
# Kept for the deployment's audit retention (MOSAIC_AUDIT_RETENTION_DAYS), never holding the data itself.
AUDIT = Topic(
    "audit",
    "AUDIT",
    audit_service_pb2.AuditRecord,
    key="answering service",
    producers=SERVICES,
    consumers=SERVICES,
    max_age=365 * DAY,
)

# The streams every service declares at start, so they exist before anyone publishes.
ALL = (
    EVENTS_RAW,
    EVENTS_RESOLVED,
    PROFILE_UPDATED,
    SEGMENT_MEMBERSHIP,
    CONSENT_CHANGED,
    DELIVERY_OUTCOME,
    IDENTITY_MERGED,
    IDENTITY_SPLIT,
    SUPPRESSION_CHANGED,
    PRIVACY_REQUESTED,
    PRIVACY_RECEIPT,
    AUDIT,
)

# Poison messages are kept here, by consuming service, with the reason in a header; the subject
# is `deadletter.<service>.<original subject>`, so it carries the key's token too.
DEAD_LETTER_STREAM = "DEAD_LETTERS"
DEAD_LETTER_SUBJECTS = "deadletter.>"


def for_deployment(events_dedup_window: float, audit_retention_days: int) -> tuple[Topic, ...]:
    """Every topic, with the deployment's events.raw duplicate window and audit retention."""
    windows: dict[str, dict[str, Any]] = {
        EVENTS_RAW.name: {"duplicate_window": events_dedup_window},
        AUDIT.name: {"max_age": audit_retention_days * DAY},
    }
    return tuple(replace(t, **windows[t.name]) if t.name in windows else t for t in ALL)


# Delivery's job queues, produced by delivery's planner and consumed by its workers: one queue
# per destination (`delivery.jobs.<destination_id>.<profile id's token>`, built by delivery's
# jobs module), not per partition, so a dead endpoint fills only its own queue, and an erasure
# finds the person's jobs (`key_subjects`). Not in ALL: delivery declares the stream itself, as a work
# queue (a job leaves the stream once its worker acked it), which every other service's LIMITS
# declaration would contradict.
DELIVERY_JOBS = Topic(
    "delivery.jobs",
    "DELIVERY_JOBS",
    delivery_pb2.DeliveryJob,
    key="destination id (a queue each), then profile id",
    producers=("delivery",),
    consumers=("delivery",),
    duplicate_window=3600.0,
)

# Every topic of the mesh, the registry's whole.
REGISTRY = (*ALL, DELIVERY_JOBS)
