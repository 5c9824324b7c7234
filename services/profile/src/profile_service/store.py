"""Profiles and their history.

Three records per change, written in this order so a crash at any point is repaired by the
redelivery of the same event:

1. the snapshot (version, time, changes, whole profile), keyed by version: rewriting it is harmless;
2. the applied-event marker (profile, message id) → version, which makes a redelivered or
   duplicated event a no-op;
3. the latest profile, read on every event and by GetProfile. A marker ahead of the latest
   profile means a crash came between 2 and 3: the service saves that snapshot again.

Snapshots are partitioned by (profile_id, bucket) with `bucket = version // BUCKET`, so no
partition grows without bound however long a customer lives.
"""

from __future__ import annotations

from typing import Protocol

from mosaic.platform.store import Migration, Repository, open_backend
from mosaic.platform.store.cassandra import CassandraStore
from mosaic.platform.store.sqlite import SqliteStore
from mosaic.profile.v1 import profile_pb2

BUCKET = 1000

CASSANDRA = [
    Migration(1, (
        "CREATE TABLE IF NOT EXISTS profile_latest (profile_id text PRIMARY KEY, version bigint, state blob)",
        "CREATE TABLE IF NOT EXISTS profile_snapshots ("
        " profile_id text, bucket bigint, version bigint, snapshot blob,"
        " PRIMARY KEY ((profile_id, bucket), version)) WITH CLUSTERING ORDER BY (version DESC)",
        "CREATE TABLE IF NOT EXISTS profile_applied_events ("
        " profile_id text, message_id text, version bigint, PRIMARY KEY ((profile_id, message_id)))",
    )),
]
SQLITE = [
    Migration(1, (
        "CREATE TABLE profile_latest (profile_id TEXT PRIMARY KEY, version INTEGER, state BLOB)",
        "CREATE TABLE profile_snapshots (profile_id TEXT, version INTEGER, snapshot BLOB,"
        " PRIMARY KEY (profile_id, version))",
        "CREATE TABLE profile_applied_events (profile_id TEXT, message_id TEXT, version INTEGER,"
        " PRIMARY KEY (profile_id, message_id))",
    )),
]


class ProfileStore(Protocol):
    async def latest(self, profile_id: str) -> profile_pb2.Profile | None: ...
    async def applied_version(self, profile_id: str, message_id: str) -> int | None:
        """The version an event produced, if it was applied already."""
    async def snapshot(self, profile_id: str, version: int) -> profile_pb2.Snapshot | None: ...
    async def save(self, snapshot: profile_pb2.Snapshot) -> None:
        """Append the snapshot, mark its event applied, make its profile the latest."""
    async def list_snapshots(self, profile_id: str, below_version: int, limit: int) -> list[profile_pb2.Snapshot]:
        """Snapshots with version < below_version, newest first."""
    async def close(self) -> None: ...


class CassandraProfileStore(Repository):
    db: CassandraStore

    async def latest(self, profile_id):
        rows = await self.db.execute("SELECT state FROM profile_latest WHERE profile_id = ?", (profile_id,))
        return profile_pb2.Profile.FromString(rows[0].state) if rows else None

    async def applied_version(self, profile_id, message_id):
        rows = await self.db.execute(
            "SELECT version FROM profile_applied_events WHERE profile_id = ? AND message_id = ?", (profile_id, message_id)
        )
        return rows[0].version if rows else None

    async def snapshot(self, profile_id, version):
        rows = await self.db.execute(
            "SELECT snapshot FROM profile_snapshots WHERE profile_id = ? AND bucket = ? AND version = ?",
            (profile_id, version // BUCKET, version),
        )
        return profile_pb2.Snapshot.FromString(rows[0].snapshot) if rows else None

    async def save(self, snapshot):
        p = snapshot.profile
        await self.db.execute(
            "INSERT INTO profile_snapshots (profile_id, bucket, version, snapshot) VALUES (?, ?, ?, ?)",
            (p.profile_id, p.version // BUCKET, p.version, snapshot.SerializeToString()),
        )
        await self.db.execute(
            "INSERT INTO profile_applied_events (profile_id, message_id, version) VALUES (?, ?, ?)",
            (p.profile_id, snapshot.cause_message_id, p.version),
        )
        await self.db.execute(
            "INSERT INTO profile_latest (profile_id, version, state) VALUES (?, ?, ?)",
            (p.profile_id, p.version, p.SerializeToString()),
        )

    async def list_snapshots(self, profile_id, below_version, limit):
        found: list[profile_pb2.Snapshot] = []
        bucket = (below_version - 1) // BUCKET
        while bucket >= 0 and len(found) < limit:
            rows = await self.db.execute(
                "SELECT snapshot FROM profile_snapshots WHERE profile_id = ? AND bucket = ? AND version < ? LIMIT ?",
                (profile_id, bucket, below_version, limit - len(found)),
            )
            found.extend(profile_pb2.Snapshot.FromString(row.snapshot) for row in rows)
            bucket -= 1
        return found



class SqliteProfileStore(Repository):
    db: SqliteStore

    async def latest(self, profile_id):
        rows = await self.db.execute("SELECT state FROM profile_latest WHERE profile_id = ?", (profile_id,))
        return profile_pb2.Profile.FromString(rows[0][0]) if rows else None

    async def applied_version(self, profile_id, message_id):
        rows = await self.db.execute(
            "SELECT version FROM profile_applied_events WHERE profile_id = ? AND message_id = ?", (profile_id, message_id)
        )
        return rows[0][0] if rows else None

    async def snapshot(self, profile_id, version):
        rows = await self.db.execute(
            "SELECT snapshot FROM profile_snapshots WHERE profile_id = ? AND version = ?", (profile_id, version)
        )
        return profile_pb2.Snapshot.FromString(rows[0][0]) if rows else None

    async def save(self, snapshot):
        p = snapshot.profile

        def work(db) -> None:
            db.execute("INSERT OR REPLACE INTO profile_snapshots VALUES (?, ?, ?)",
                       (p.profile_id, p.version, snapshot.SerializeToString()))
            db.execute("INSERT OR REPLACE INTO profile_latest VALUES (?, ?, ?)",
                       (p.profile_id, p.version, p.SerializeToString()))
            db.execute("INSERT OR REPLACE INTO profile_applied_events VALUES (?, ?, ?)",
                       (p.profile_id, snapshot.cause_message_id, p.version))

        await self.db.transaction(work)

    async def list_snapshots(self, profile_id, below_version, limit):
        rows = await self.db.execute(
            "SELECT snapshot FROM profile_snapshots WHERE profile_id = ? AND version < ? ORDER BY version DESC LIMIT ?",
            (profile_id, below_version, limit),
        )
        return [profile_pb2.Snapshot.FromString(row[0]) for row in rows]



async def open_store(settings) -> ProfileStore:
    backend = await open_backend(settings, "profile", CASSANDRA, SQLITE)
    if isinstance(backend, CassandraStore):
        return CassandraProfileStore(backend)
    return SqliteProfileStore(backend)
