"""Consent's records and the conversions both backends share."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from mosaic.consent.v1 import consent_pb2


@dataclass(frozen=True)
class OutboxEntry:
    """A message to publish: its id (JetStream drops a republished duplicate), topic, key, payload."""

    message_id: str
    topic: str
    key: str
    payload: bytes


@dataclass(frozen=True)
class Move:
    """A profile a merge moved to the survivor, and the person it belonged to before."""

    profile_id: str
    previous_head: str


@dataclass(frozen=True)
class MergeRecord:
    """What a merge changed, kept so that its split undoes exactly that."""

    merge_id: str
    survivor: str
    moves: tuple[Move, ...]
    split: bool


@dataclass(frozen=True)
class Expiry:
    """A grant that lapses: when, whose, which purpose."""

    expires_us: int
    profile_id: str
    purpose: str


def expiries_of(decisions) -> list[Expiry]:
    return [
        Expiry(micros(d.expires_at), d.profile_id, d.purpose)
        for d in decisions
        if d.HasField("expires_at") and d.granted
    ]


def erasure_key(profile_id: str) -> str:
    """The tombstone of an erased profile id: a hash, never the id (see ConsentStore.record_erasures)."""
    return hashlib.sha256(f"consent-erased:{profile_id}".encode()).hexdigest()


def micros(ts: timestamp_pb2.Timestamp) -> int:
    """A timestamp as the ledger keeps it: milliseconds (what Cassandra keeps), in microseconds."""
    return ts.seconds * 1_000_000 + (ts.nanos // 1_000_000) * 1000


def timestamp(us: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(us)
    return ts


def encode_moves(moves: tuple[Move, ...]) -> str:
    return "\n".join(f"{m.profile_id}\t{m.previous_head}" for m in moves)


def decode_moves(text: str) -> tuple[Move, ...]:
    return tuple(Move(*line.split("\t", 1)) for line in text.splitlines() if line)


def decision_from(
    profile_id: str, purpose: str, decided_us: int, granted: bool, source: str | None, entry: bytes | None
) -> consent_pb2.ConsentDecision:
    """A ledger row as a decision: the whole entry when stored, else the first version's columns."""
    decision = consent_pb2.ConsentDecision.FromString(entry) if entry else consent_pb2.ConsentDecision()
    decision.profile_id, decision.purpose, decision.granted = profile_id, purpose, granted
    decision.source = source or decision.source
    decision.decided_at.CopyFrom(timestamp(decided_us))
    return decision
