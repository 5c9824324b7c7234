"""The identity graph's claims: each identifier belongs to at most one profile.

A claim is written once and never overwritten, with a Cassandra lightweight transaction
(INSERT ... IF NOT EXISTS) or a SQLite transaction, so two replicas racing for the same
identifier agree on one owner: the loser reads the winner's claim and follows it.
"""

from __future__ import annotations

from typing import Protocol

from mosaic.platform.store import Migration, Repository, open_backend
from mosaic.platform.store.cassandra import CassandraStore
from mosaic.platform.store.sqlite import SqliteStore

CASSANDRA = [
    Migration(1, (
        "CREATE TABLE IF NOT EXISTS identity_claims ("
        " id_type text, id_value text, profile_id text, claimed_at timestamp,"
        " PRIMARY KEY ((id_type, id_value)))",
    )),
]
SQLITE = [
    Migration(1, (
        "CREATE TABLE identity_claims (id_type TEXT, id_value TEXT, profile_id TEXT NOT NULL,"
        " claimed_at TEXT NOT NULL, PRIMARY KEY (id_type, id_value))",
    )),
]


class IdentityStore(Protocol):
    async def owner(self, id_type: str, id_value: str) -> str | None:
        """The profile that owns the identifier, if any."""

    async def claim(self, id_type: str, id_value: str, profile_id: str) -> str:
        """Claim the identifier for `profile_id` unless already owned; returns the owner."""

    async def close(self) -> None: ...


class CassandraIdentityStore(Repository):
    db: CassandraStore

    async def owner(self, id_type: str, id_value: str) -> str | None:
        rows = await self.db.execute(
            "SELECT profile_id FROM identity_claims WHERE id_type = ? AND id_value = ?",
            (id_type, id_value),
        )
        return rows[0].profile_id if rows else None

    async def claim(self, id_type: str, id_value: str, profile_id: str) -> str:
        applied, row = await self.db.execute_lwt(
            "INSERT INTO identity_claims (id_type, id_value, profile_id, claimed_at)"
            " VALUES (?, ?, ?, toTimestamp(now())) IF NOT EXISTS",
            (id_type, id_value, profile_id),
        )
        return profile_id if applied else row.profile_id



class SqliteIdentityStore(Repository):
    db: SqliteStore

    async def owner(self, id_type: str, id_value: str) -> str | None:
        rows = await self.db.execute(
            "SELECT profile_id FROM identity_claims WHERE id_type = ? AND id_value = ?", (id_type, id_value)
        )
        return rows[0][0] if rows else None

    async def claim(self, id_type: str, id_value: str, profile_id: str) -> str:
        def work(db) -> str:
            db.execute(
                "INSERT OR IGNORE INTO identity_claims VALUES (?, ?, ?, datetime('now'))",
                (id_type, id_value, profile_id),
            )
            return db.execute(
                "SELECT profile_id FROM identity_claims WHERE id_type = ? AND id_value = ?", (id_type, id_value)
            ).fetchone()[0]

        return await self.db.transaction(work)



async def open_store(settings) -> IdentityStore:
    backend = await open_backend(settings, "identity", CASSANDRA, SQLITE)
    if isinstance(backend, CassandraStore):
        return CassandraIdentityStore(backend)
    return SqliteIdentityStore(backend)
