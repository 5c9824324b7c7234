"""Ingestion's repository on Cassandra (see base.py for what is kept and why)."""

from __future__ import annotations

import hashlib
from collections.abc import Collection

from ingestion_service.store.base import IngestionStore
from mosaic.ingestion.v1 import quarantine_pb2, source_pb2
from mosaic.platform.store import Migration, Repository
from mosaic.platform.store.cassandra import CassandraStore

# The suppression list is read whole at start: spread over this many partitions.
SUPPRESSION_BUCKETS = 64

MIGRATIONS = [
    Migration(
        1,
        (
            "CREATE TABLE IF NOT EXISTS sources (source_id text PRIMARY KEY, body blob)",
            "CREATE TABLE IF NOT EXISTS write_keys (key_hash text PRIMARY KEY, source_id text, key_id text,"
            " created_at_ms bigint, expires_at_ms bigint)",
            "CREATE TABLE IF NOT EXISTS write_keys_by_source (source_id text, key_hash text, key_id text,"
            " created_at_ms bigint, expires_at_ms bigint, PRIMARY KEY ((source_id), key_hash))",
            "CREATE TABLE IF NOT EXISTS quarantine (source_id text, message_id text, body blob,"
            " PRIMARY KEY ((source_id), message_id))",
            "CREATE TABLE IF NOT EXISTS suppressed (bucket int, hash text, PRIMARY KEY ((bucket), hash))",
            "CREATE TABLE IF NOT EXISTS ingestion_settings (name text PRIMARY KEY, value text)",
        ),
    ),
    Migration(
        2,
        (
            "CREATE TABLE IF NOT EXISTS quarantine_by_person (person_hash text, source_id text, message_id text,"
            " PRIMARY KEY ((person_hash), source_id, message_id))",
        ),
    ),
    Migration(3, ("CREATE TABLE IF NOT EXISTS consent_states (person_hash text PRIMARY KEY, state blob)",)),
]


def _bucket(hash_: str) -> int:
    return int(hashlib.blake2b(hash_.encode(), digest_size=2).hexdigest(), 16) % SUPPRESSION_BUCKETS


def _key(row) -> source_pb2.WriteKey:
    key = source_pb2.WriteKey(key_id=row.key_id)
    key.created_at.FromMilliseconds(row.created_at_ms)
    if row.expires_at_ms:
        key.expires_at.FromMilliseconds(row.expires_at_ms)
    return key


class CassandraIngestionStore(Repository, IngestionStore):
    db: CassandraStore

    async def create_source(self, source: source_pb2.Source) -> bool:
        applied, _ = await self.db.execute_lwt(
            "INSERT INTO sources (source_id, body) VALUES (?, ?) IF NOT EXISTS",
            (source.source_id, source.SerializeToString()),
        )
        return applied

    async def get_source(self, source_id: str) -> source_pb2.Source | None:
        rows = await self.db.execute("SELECT body FROM sources WHERE source_id = ?", (source_id,))
        return source_pb2.Source.FromString(rows[0].body) if rows else None

    async def list_sources(self) -> list[source_pb2.Source]:
        rows = await self.db.execute("SELECT body FROM sources LIMIT 10000")
        return sorted((source_pb2.Source.FromString(r.body) for r in rows), key=lambda s: s.source_id)

    async def save_source(self, source: source_pb2.Source) -> None:
        await self.db.execute(
            "INSERT INTO sources (source_id, body) VALUES (?, ?)", (source.source_id, source.SerializeToString())
        )

    async def add_write_key(self, source_id: str, key_hash: str, key: source_pb2.WriteKey) -> None:
        expires = key.expires_at.ToMilliseconds() if key.HasField("expires_at") else 0
        values = (key_hash, source_id, key.key_id, key.created_at.ToMilliseconds(), expires)
        # Listed first, usable second: a key is never usable without being listed for rotation.
        await self.db.execute(
            "INSERT INTO write_keys_by_source (key_hash, source_id, key_id, created_at_ms, expires_at_ms)"
            " VALUES (?, ?, ?, ?, ?)",
            values,
        )
        await self.db.execute(
            "INSERT INTO write_keys (key_hash, source_id, key_id, created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?)",
            values,
        )

    async def set_key_expiry(self, source_id: str, key_hash: str, expires_at_ms: int) -> None:
        await self.db.execute("UPDATE write_keys SET expires_at_ms = ? WHERE key_hash = ?", (expires_at_ms, key_hash))
        await self.db.execute(
            "UPDATE write_keys_by_source SET expires_at_ms = ? WHERE source_id = ? AND key_hash = ?",
            (expires_at_ms, source_id, key_hash),
        )

    async def write_keys(self, source_id: str) -> list[tuple[str, source_pb2.WriteKey]]:
        rows = await self.db.execute(
            "SELECT key_hash, key_id, created_at_ms, expires_at_ms FROM write_keys_by_source WHERE source_id = ? LIMIT 1000",
            (source_id,),
        )
        return sorted(((r.key_hash, _key(r)) for r in rows), key=lambda pair: pair[1].created_at.ToMilliseconds())

    async def key_owner(self, key_hash: str) -> tuple[str, int] | None:
        rows = await self.db.execute("SELECT source_id, expires_at_ms FROM write_keys WHERE key_hash = ?", (key_hash,))
        return (rows[0].source_id, rows[0].expires_at_ms or 0) if rows else None

    async def put_quarantined(
        self, kept: quarantine_pb2.QuarantinedEvent, retention_days: int, people: Collection[str]
    ) -> None:
        source_id, message_id, ttl = kept.source_id, kept.event.message_id, retention_days * 86400
        # Indexed first (one request), kept second: an erasure can always find a kept event.
        if people:
            await self.db.execute_together(
                [
                    (
                        "INSERT INTO quarantine_by_person (person_hash, source_id, message_id) VALUES (?, ?, ?) USING TTL ?",
                        (person, source_id, message_id, ttl),
                    )
                    for person in people
                ]
            )
        await self.db.execute(
            "INSERT INTO quarantine (source_id, message_id, body) VALUES (?, ?, ?) USING TTL ?",
            (source_id, message_id, kept.SerializeToString(), ttl),
        )

    async def get_quarantined(self, source_id: str, message_id: str) -> quarantine_pb2.QuarantinedEvent | None:
        rows = await self.db.execute(
            "SELECT body FROM quarantine WHERE source_id = ? AND message_id = ?", (source_id, message_id)
        )
        return quarantine_pb2.QuarantinedEvent.FromString(rows[0].body) if rows else None

    async def list_quarantined(self, source_id: str, after: str, limit: int) -> list[quarantine_pb2.QuarantinedEvent]:
        rows = await self.db.execute(
            "SELECT body FROM quarantine WHERE source_id = ? AND message_id > ? LIMIT ?", (source_id, after, limit)
        )
        return [quarantine_pb2.QuarantinedEvent.FromString(r.body) for r in rows]

    async def delete_quarantined(self, source_id: str, message_id: str) -> None:
        await self.db.execute("DELETE FROM quarantine WHERE source_id = ? AND message_id = ?", (source_id, message_id))

    async def quarantined_naming(self, person: str) -> list[tuple[str, str]]:
        rows = await self.db.execute(
            "SELECT source_id, message_id FROM quarantine_by_person WHERE person_hash = ? LIMIT 5000", (person,)
        )
        return [(r.source_id, r.message_id) for r in rows]

    async def unlink_quarantined(self, person: str, source_id: str, message_id: str) -> None:
        await self.db.execute(
            "DELETE FROM quarantine_by_person WHERE person_hash = ? AND source_id = ? AND message_id = ?",
            (person, source_id, message_id),
        )

    async def add_suppressed(self, hashes: list[str]) -> None:
        for hash_ in hashes:
            await self.db.execute("INSERT INTO suppressed (bucket, hash) VALUES (?, ?)", (_bucket(hash_), hash_))

    async def remove_suppressed(self, hashes: list[str]) -> None:
        for hash_ in hashes:
            await self.db.execute("DELETE FROM suppressed WHERE bucket = ? AND hash = ?", (_bucket(hash_), hash_))

    async def suppressed(self) -> set[str]:
        hashes: set[str] = set()
        for bucket in range(SUPPRESSION_BUCKETS):
            # One page per bucket (the driver's 5,000 rows): 320,000 hashes in all for now.
            rows = await self.db.execute("SELECT hash FROM suppressed WHERE bucket = ?", (bucket,))
            hashes.update(r.hash for r in rows)
        return hashes

    async def consent_states(self, hashes: Collection[str]) -> dict[str, bytes]:
        wanted = sorted(set(hashes))
        states = {}
        for start in range(0, len(wanted), 100):
            rows = await self.db.execute(
                "SELECT person_hash, state FROM consent_states WHERE person_hash IN ?", (wanted[start : start + 100],)
            )
            states.update({r.person_hash: r.state for r in rows})
        return states

    async def put_consent_states(self, states: dict[str, bytes]) -> None:
        statement = "INSERT INTO consent_states (person_hash, state) VALUES (?, ?)"
        items = list(states.items())
        for start in range(0, len(items), 10):  # a person's few ids: one request, under the node's warning
            await self.db.execute_together([(statement, item) for item in items[start : start + 10]])

    async def delete_consent_states(self, hashes: Collection[str]) -> None:
        for hash_ in hashes:
            await self.db.execute("DELETE FROM consent_states WHERE person_hash = ?", (hash_,))

    async def setting(self, name: str, proposed: str) -> str:
        applied, row = await self.db.execute_lwt(
            "INSERT INTO ingestion_settings (name, value) VALUES (?, ?) IF NOT EXISTS", (name, proposed)
        )
        return proposed if applied else row.value
