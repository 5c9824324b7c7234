"""What ingestion keeps: sources, write keys (hashed), quarantined events, the suppression list.

Sources are stored whole as protobuf (without their keys); write keys by the SHA-256 of the
secret, never the secret; quarantined events with a retention (a TTL on Cassandra, an expiry
column on SQLite); the suppression list as salted hashes, bucketed on Cassandra so no
partition grows without bound. Quarantined events are also indexed by the salted hashes of
the people they name (the suppression list's hashes), with the same retention, so an erasure
finds them without reading the whole quarantine. The consent of people, from consent.changed,
is kept by the same salted hashes of their user and anonymous ids (consent.py). Times are milliseconds since the epoch on
both backends.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from mosaic.ingestion.v1 import quarantine_pb2, source_pb2


class IngestionStore(Protocol):
    async def create_source(self, source: source_pb2.Source) -> bool:
        """Store a new source; False when the id is taken."""

    async def get_source(self, source_id: str) -> source_pb2.Source | None: ...
    async def list_sources(self) -> list[source_pb2.Source]:
        """Every source, by id."""

    async def save_source(self, source: source_pb2.Source) -> None: ...
    async def add_write_key(self, source_id: str, key_hash: str, key: source_pb2.WriteKey) -> None: ...
    async def set_key_expiry(self, source_id: str, key_hash: str, expires_at_ms: int) -> None: ...
    async def write_keys(self, source_id: str) -> list[tuple[str, source_pb2.WriteKey]]:
        """The source's keys as (hash, key without secret), oldest first."""

    async def key_owner(self, key_hash: str) -> tuple[str, int] | None:
        """The source of a key and when it expires (0: never), or None for an unknown key."""

    async def put_quarantined(
        self, kept: quarantine_pb2.QuarantinedEvent, retention_days: int, people: Collection[str]
    ) -> None:
        """Keep an event, findable by `people`: the salted hashes of the identifiers it names."""

    async def get_quarantined(self, source_id: str, message_id: str) -> quarantine_pb2.QuarantinedEvent | None: ...
    async def list_quarantined(self, source_id: str, after: str, limit: int) -> list[quarantine_pb2.QuarantinedEvent]:
        """Up to `limit` quarantined events of the source with a message id after `after`, in order."""

    async def delete_quarantined(self, source_id: str, message_id: str) -> None: ...
    async def quarantined_naming(self, person: str) -> list[tuple[str, str]]:
        """(source id, message id) of the events kept under a person's hash; an event may since
        be gone, or (replayed with a fix) no longer name them."""

    async def unlink_quarantined(self, person: str, source_id: str, message_id: str) -> None:
        """Drop one entry of the person index."""

    async def add_suppressed(self, hashes: list[str]) -> None: ...
    async def remove_suppressed(self, hashes: list[str]) -> None: ...
    async def suppressed(self) -> set[str]:
        """Every hash on the suppression list."""

    async def consent_states(self, hashes: Collection[str]) -> dict[str, bytes]:
        """The stored consent (a serialized PersonConsent) of each of `hashes` that has one."""

    async def put_consent_states(self, states: dict[str, bytes]) -> None: ...
    async def delete_consent_states(self, hashes: Collection[str]) -> None: ...

    async def setting(self, name: str, proposed: str) -> str:
        """The stored value of a setting; `proposed` is stored first when there is none."""

    async def close(self) -> None: ...
