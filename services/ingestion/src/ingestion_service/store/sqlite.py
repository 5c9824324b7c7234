"""Ingestion's repository on SQLite (see base.py for what is kept and why)."""

from __future__ import annotations

import time
from collections.abc import Collection

from ingestion_service.store.base import IngestionStore
from mosaic.ingestion.v1 import quarantine_pb2, source_pb2
from mosaic.platform.store import Migration, Repository
from mosaic.platform.store.sqlite import SqliteStore

MIGRATIONS = [
    Migration(
        1,
        (
            "CREATE TABLE sources (source_id TEXT PRIMARY KEY, body BLOB)",
            "CREATE TABLE write_keys (key_hash TEXT PRIMARY KEY, source_id TEXT, key_id TEXT,"
            " created_at_ms INTEGER, expires_at_ms INTEGER)",
            "CREATE INDEX write_keys_by_source ON write_keys (source_id)",
            "CREATE TABLE quarantine (source_id TEXT, message_id TEXT, body BLOB, expires_at_ms INTEGER,"
            " PRIMARY KEY (source_id, message_id))",
            "CREATE TABLE suppressed (hash TEXT PRIMARY KEY)",
            "CREATE TABLE ingestion_settings (name TEXT PRIMARY KEY, value TEXT)",
        ),
    ),
    Migration(
        2,
        (
            "CREATE TABLE quarantine_by_person (person_hash TEXT, source_id TEXT, message_id TEXT, expires_at_ms INTEGER,"
            " PRIMARY KEY (person_hash, source_id, message_id))",
        ),
    ),
    Migration(3, ("CREATE TABLE consent_states (person_hash TEXT PRIMARY KEY, state BLOB)",)),
]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _key(row) -> source_pb2.WriteKey:
    key = source_pb2.WriteKey(key_id=row[1])
    key.created_at.FromMilliseconds(row[2])
    if row[3]:
        key.expires_at.FromMilliseconds(row[3])
    return key


class SqliteIngestionStore(Repository, IngestionStore):
    db: SqliteStore

    async def create_source(self, source: source_pb2.Source) -> bool:
        def insert(db) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO sources VALUES (?, ?)", (source.source_id, source.SerializeToString())
            )
            return cursor.rowcount == 1

        return await self.db.transaction(insert)

    async def get_source(self, source_id: str) -> source_pb2.Source | None:
        rows = await self.db.execute("SELECT body FROM sources WHERE source_id = ?", (source_id,))
        return source_pb2.Source.FromString(rows[0][0]) if rows else None

    async def list_sources(self) -> list[source_pb2.Source]:
        rows = await self.db.execute("SELECT body FROM sources ORDER BY source_id")
        return [source_pb2.Source.FromString(r[0]) for r in rows]

    async def save_source(self, source: source_pb2.Source) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO sources VALUES (?, ?)", (source.source_id, source.SerializeToString())
        )

    async def add_write_key(self, source_id: str, key_hash: str, key: source_pb2.WriteKey) -> None:
        expires = key.expires_at.ToMilliseconds() if key.HasField("expires_at") else 0
        await self.db.execute(
            "INSERT OR REPLACE INTO write_keys VALUES (?, ?, ?, ?, ?)",
            (key_hash, source_id, key.key_id, key.created_at.ToMilliseconds(), expires),
        )

    async def set_key_expiry(self, source_id: str, key_hash: str, expires_at_ms: int) -> None:
        await self.db.execute(
            "UPDATE write_keys SET expires_at_ms = ? WHERE key_hash = ? AND source_id = ?",
            (expires_at_ms, key_hash, source_id),
        )

    async def write_keys(self, source_id: str) -> list[tuple[str, source_pb2.WriteKey]]:
        rows = await self.db.execute(
            "SELECT key_hash, key_id, created_at_ms, expires_at_ms FROM write_keys WHERE source_id = ?"
            " ORDER BY created_at_ms, key_hash",
            (source_id,),
        )
        return [(r[0], _key(r)) for r in rows]

    async def key_owner(self, key_hash: str) -> tuple[str, int] | None:
        rows = await self.db.execute("SELECT source_id, expires_at_ms FROM write_keys WHERE key_hash = ?", (key_hash,))
        return (rows[0][0], rows[0][1] or 0) if rows else None

    async def put_quarantined(
        self, kept: quarantine_pb2.QuarantinedEvent, retention_days: int, people: Collection[str]
    ) -> None:
        expires = _now_ms() + retention_days * 86_400_000
        source_id, message_id = kept.source_id, kept.event.message_id

        def insert(db) -> None:
            db.execute(
                "INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?)",
                (source_id, message_id, kept.SerializeToString(), expires),
            )
            db.executemany(
                "INSERT OR REPLACE INTO quarantine_by_person VALUES (?, ?, ?, ?)",
                [(person, source_id, message_id, expires) for person in people],
            )

        await self.db.transaction(insert)

    async def get_quarantined(self, source_id: str, message_id: str) -> quarantine_pb2.QuarantinedEvent | None:
        rows = await self.db.execute(
            "SELECT body FROM quarantine WHERE source_id = ? AND message_id = ? AND expires_at_ms > ?",
            (source_id, message_id, _now_ms()),
        )
        return quarantine_pb2.QuarantinedEvent.FromString(rows[0][0]) if rows else None

    async def list_quarantined(self, source_id: str, after: str, limit: int) -> list[quarantine_pb2.QuarantinedEvent]:
        now = _now_ms()
        await self.db.execute("DELETE FROM quarantine WHERE source_id = ? AND expires_at_ms <= ?", (source_id, now))
        rows = await self.db.execute(
            "SELECT body FROM quarantine WHERE source_id = ? AND message_id > ? ORDER BY message_id LIMIT ?",
            (source_id, after, limit),
        )
        return [quarantine_pb2.QuarantinedEvent.FromString(r[0]) for r in rows]

    async def delete_quarantined(self, source_id: str, message_id: str) -> None:
        await self.db.execute("DELETE FROM quarantine WHERE source_id = ? AND message_id = ?", (source_id, message_id))

    async def quarantined_naming(self, person: str) -> list[tuple[str, str]]:
        rows = await self.db.execute(
            "SELECT source_id, message_id FROM quarantine_by_person WHERE person_hash = ? AND expires_at_ms > ?",
            (person, _now_ms()),
        )
        return [(r[0], r[1]) for r in rows]

    async def unlink_quarantined(self, person: str, source_id: str, message_id: str) -> None:
        await self.db.execute(
            "DELETE FROM quarantine_by_person WHERE person_hash = ? AND source_id = ? AND message_id = ?",
            (person, source_id, message_id),
        )

    async def add_suppressed(self, hashes: list[str]) -> None:
        await self.db.transaction(
            lambda db: db.executemany("INSERT OR IGNORE INTO suppressed VALUES (?)", [(h,) for h in hashes])
        )

    async def remove_suppressed(self, hashes: list[str]) -> None:
        await self.db.transaction(
            lambda db: db.executemany("DELETE FROM suppressed WHERE hash = ?", [(h,) for h in hashes])
        )

    async def suppressed(self) -> set[str]:
        return {r[0] for r in await self.db.execute("SELECT hash FROM suppressed")}

    async def consent_states(self, hashes: Collection[str]) -> dict[str, bytes]:
        wanted = sorted(set(hashes))
        states = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = await self.db.execute(
                f"SELECT person_hash, state FROM consent_states WHERE person_hash IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            states.update({r[0]: r[1] for r in rows})
        return states

    async def put_consent_states(self, states: dict[str, bytes]) -> None:
        rows = list(states.items())
        await self.db.transaction(
            lambda db: db.executemany("INSERT OR REPLACE INTO consent_states VALUES (?, ?)", rows)
        )

    async def delete_consent_states(self, hashes: Collection[str]) -> None:
        rows = [(h,) for h in hashes]
        await self.db.transaction(lambda db: db.executemany("DELETE FROM consent_states WHERE person_hash = ?", rows))

    async def setting(self, name: str, proposed: str) -> str:
        def get_or_put(db) -> str:
            db.execute("INSERT OR IGNORE INTO ingestion_settings VALUES (?, ?)", (name, proposed))
            return db.execute("SELECT value FROM ingestion_settings WHERE name = ?", (name,)).fetchone()[0]

        return await self.db.transaction(get_or_put)
