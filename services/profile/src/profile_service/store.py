"""Profiles, their history, the event archive and computed-trait definitions.

Per change, written in this order so that a crash at any point is repaired by redelivery:

1. the snapshot, keyed by version (rewriting it is harmless), and its time-index row;
2. the applied-event marker (profile, message id) → version: a redelivered or duplicated
   event becomes a no-op;
3. the latest profile with its computed-trait partials. A marker ahead of the latest profile
   means a crash came between 2 and 3; the service then saves that snapshot again.

Snapshots are partitioned by (profile_id, version // 1000) and the time index by
(profile_id, month), so no partition grows without bound however long a customer lives. The
archive is partitioned by (profile_id, day) and expires with a TTL.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import AsyncIterator, Protocol

from mosaic.events.v1 import event_pb2
from mosaic.platform.errors import AlreadyExists
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
    Migration(2, (
        "ALTER TABLE profile_latest ADD IF NOT EXISTS aggregates text",
        "ALTER TABLE profile_latest ADD IF NOT EXISTS first_month text",
        "ALTER TABLE profile_snapshots ADD IF NOT EXISTS is_full boolean",
        "CREATE TABLE IF NOT EXISTS profile_snapshot_times ("
        " profile_id text, month text, recorded_at timestamp, version bigint,"
        " PRIMARY KEY ((profile_id, month), recorded_at, version))"
        " WITH CLUSTERING ORDER BY (recorded_at DESC, version DESC)",
        "CREATE TABLE IF NOT EXISTS profile_identifiers (id_type text, id_value text, profile_id text,"
        " PRIMARY KEY ((id_type, id_value)))",
        "CREATE TABLE IF NOT EXISTS profile_events ("
        " profile_id text, day text, event_time timestamp, message_id text, name text, event blob,"
        " PRIMARY KEY ((profile_id, day), event_time, message_id))"
        " WITH CLUSTERING ORDER BY (event_time DESC, message_id DESC)",
        "CREATE TABLE IF NOT EXISTS profile_computed_traits (name text PRIMARY KEY, definition blob)",
    )),
]
SQLITE = [
    Migration(1, (
        "CREATE TABLE profile_latest (profile_id TEXT PRIMARY KEY, version INTEGER, state BLOB)",
        "CREATE TABLE profile_snapshots (profile_id TEXT, version INTEGER, snapshot BLOB, PRIMARY KEY (profile_id, version))",
        "CREATE TABLE profile_applied_events (profile_id TEXT, message_id TEXT, version INTEGER,"
        " PRIMARY KEY (profile_id, message_id))",
    )),
    Migration(2, (
        "ALTER TABLE profile_latest ADD COLUMN aggregates TEXT",
        "ALTER TABLE profile_latest ADD COLUMN first_month TEXT",
        "ALTER TABLE profile_snapshots ADD COLUMN is_full INTEGER",
        "ALTER TABLE profile_snapshots ADD COLUMN recorded_us INTEGER",
        "CREATE INDEX profile_snapshots_time ON profile_snapshots (profile_id, recorded_us)",
        "CREATE TABLE profile_identifiers (id_type TEXT, id_value TEXT, profile_id TEXT, PRIMARY KEY (id_type, id_value))",
        "CREATE TABLE profile_events (profile_id TEXT, event_time_us INTEGER, message_id TEXT, name TEXT, event BLOB,"
        " expires_us INTEGER, PRIMARY KEY (profile_id, event_time_us, message_id))",
        "CREATE TABLE profile_computed_traits (name TEXT PRIMARY KEY, definition BLOB)",
    )),
]


@dataclass
class Latest:
    """The latest profile, with the partials of its computed traits (JSON)."""

    profile: profile_pb2.Profile
    aggregates: str = "{}"


@dataclass
class StoredSnapshot:
    snapshot: profile_pb2.Snapshot
    full: bool


def month_of(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, tz=timezone.utc).strftime("%Y-%m")


def _dt(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1e6, tz=timezone.utc)


def _us(value: datetime) -> int:
    return int(value.replace(tzinfo=timezone.utc).timestamp() * 1_000_000)


class ProfileStore(Protocol):
    async def latest(self, profile_id: str) -> Latest | None: ...
    async def applied_version(self, profile_id: str, message_id: str) -> int | None: ...
    async def save(self, stored: StoredSnapshot, latest: Latest) -> None:
        """Append the snapshot, mark its event applied, make `latest` the latest."""
    async def snapshots(self, profile_id: str, from_version: int, to_version: int) -> list[StoredSnapshot]:
        """Snapshots with from_version <= version <= to_version, oldest first."""
    async def list_snapshots(self, profile_id: str, below_version: int, limit: int) -> list[profile_pb2.Snapshot]:
        """Snapshots with version < below_version, newest first."""
    async def version_at(self, profile_id: str, at_us: int) -> int:
        """The last version recorded at or before `at_us`; 0 when none."""
    async def index_identifier(self, id_type: str, id_value: str, profile_id: str) -> None: ...
    async def profile_of(self, id_type: str, id_value: str) -> str | None: ...
    async def archive(self, profile_id: str, event: event_pb2.Event, name: str, ttl_seconds: int) -> None: ...
    async def events(self, profile_id: str, since_us: int, until_us: int, limit: int) -> list[event_pb2.Event]:
        """Archived events with since_us <= time < until_us, newest first."""
    async def scan(self) -> AsyncIterator[profile_pb2.Profile]: ...
    async def create_definition(self, definition: profile_pb2.ComputedTraitDefinition) -> None: ...
    async def definitions(self) -> list[profile_pb2.ComputedTraitDefinition]: ...
    async def delete_definition(self, name: str) -> bool: ...
    async def close(self) -> None: ...


class CassandraProfileStore(Repository):
    db: CassandraStore

    async def latest(self, profile_id):
        rows = await self.db.execute("SELECT state, aggregates FROM profile_latest WHERE profile_id = ?", (profile_id,))
        if not rows:
            return None
        return Latest(profile_pb2.Profile.FromString(rows[0].state), rows[0].aggregates or "{}")

    async def applied_version(self, profile_id, message_id):
        rows = await self.db.execute(
            "SELECT version FROM profile_applied_events WHERE profile_id = ? AND message_id = ?", (profile_id, message_id)
        )
        return rows[0].version if rows else None

    async def save(self, stored, latest):
        s, p = stored.snapshot, latest.profile
        recorded_us = s.recorded_at.ToMicroseconds()
        # The snapshot and its time-index row are independent: write them together.
        await asyncio.gather(
            self.db.execute(
                "INSERT INTO profile_snapshots (profile_id, bucket, version, snapshot, is_full) VALUES (?, ?, ?, ?, ?)",
                (p.profile_id, s.version // BUCKET, s.version, s.SerializeToString(), stored.full),
            ),
            self.db.execute(
                "INSERT INTO profile_snapshot_times (profile_id, month, recorded_at, version) VALUES (?, ?, ?, ?)",
                (p.profile_id, month_of(recorded_us), _dt(recorded_us), s.version),
            ),
        )
        await self.db.execute(
            "INSERT INTO profile_applied_events (profile_id, message_id, version) VALUES (?, ?, ?)",
            (p.profile_id, s.cause_message_id, s.version),
        )
        if s.version == 1:  # where the time index starts, for GetProfileAt
            await self.db.execute(
                "INSERT INTO profile_latest (profile_id, version, state, aggregates, first_month) VALUES (?, ?, ?, ?, ?)",
                (p.profile_id, p.version, p.SerializeToString(), latest.aggregates, month_of(recorded_us)),
            )
        else:
            await self.db.execute(
                "INSERT INTO profile_latest (profile_id, version, state, aggregates) VALUES (?, ?, ?, ?)",
                (p.profile_id, p.version, p.SerializeToString(), latest.aggregates),
            )

    async def snapshots(self, profile_id, from_version, to_version):
        found: list[StoredSnapshot] = []
        for bucket in range(from_version // BUCKET, to_version // BUCKET + 1):
            rows = await self.db.execute(
                "SELECT snapshot, is_full FROM profile_snapshots WHERE profile_id = ? AND bucket = ?"
                " AND version >= ? AND version <= ? ORDER BY version ASC",
                (profile_id, bucket, from_version, to_version),
            )
            found.extend(StoredSnapshot(profile_pb2.Snapshot.FromString(r.snapshot), bool(r.is_full)) for r in rows)
        return found

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

    async def version_at(self, profile_id, at_us):
        rows = await self.db.execute("SELECT first_month FROM profile_latest WHERE profile_id = ?", (profile_id,))
        if not rows or not rows[0].first_month:
            return 0
        first, month = rows[0].first_month, month_of(at_us)
        while month >= first:
            found = await self.db.execute(
                "SELECT version FROM profile_snapshot_times WHERE profile_id = ? AND month = ? AND recorded_at <= ? LIMIT 1",
                (profile_id, month, _dt(at_us)),
            )
            if found:
                return found[0].version
            year, number = int(month[:4]), int(month[5:])
            month = f"{year - 1}-12" if number == 1 else f"{year}-{number - 1:02d}"
        return 0

    async def index_identifier(self, id_type, id_value, profile_id):
        await self.db.execute(
            "INSERT INTO profile_identifiers (id_type, id_value, profile_id) VALUES (?, ?, ?)", (id_type, id_value, profile_id)
        )

    async def profile_of(self, id_type, id_value):
        rows = await self.db.execute(
            "SELECT profile_id FROM profile_identifiers WHERE id_type = ? AND id_value = ?", (id_type, id_value)
        )
        return rows[0].profile_id if rows else None

    async def archive(self, profile_id, event, name, ttl_seconds):
        at = event.timestamp.ToMicroseconds()
        await self.db.execute(
            "INSERT INTO profile_events (profile_id, day, event_time, message_id, name, event) VALUES (?, ?, ?, ?, ?, ?)"
            " USING TTL ?",
            (profile_id, _dt(at).strftime("%Y-%m-%d"), _dt(at), event.message_id, name, event.SerializeToString(), ttl_seconds),
        )

    async def events(self, profile_id, since_us, until_us, limit):
        found: list[event_pb2.Event] = []
        day, first = _dt(until_us - 1).date(), _dt(since_us).date()
        while day >= first and len(found) < limit:
            rows = await self.db.execute(
                "SELECT event FROM profile_events WHERE profile_id = ? AND day = ? AND event_time >= ? AND event_time < ? LIMIT ?",
                (profile_id, day.strftime("%Y-%m-%d"), _dt(since_us), _dt(until_us), limit - len(found)),
            )
            found.extend(event_pb2.Event.FromString(r.event) for r in rows)
            day = day.fromordinal(day.toordinal() - 1)
        return found

    async def scan(self):
        token = -(2**63)
        while True:
            rows = await self.db.execute(
                "SELECT token(profile_id) AS t, state FROM profile_latest WHERE token(profile_id) > ? LIMIT 500", (token,)
            )
            for row in rows:
                yield profile_pb2.Profile.FromString(row.state)
            if len(rows) < 500:
                return
            token = rows[-1].t

    async def create_definition(self, definition):
        applied, _ = await self.db.execute_lwt(
            "INSERT INTO profile_computed_traits (name, definition) VALUES (?, ?) IF NOT EXISTS",
            (definition.name, definition.SerializeToString()),
        )
        if not applied:
            raise AlreadyExists("computed trait", definition.name)

    async def definitions(self):
        rows = await self.db.execute("SELECT definition FROM profile_computed_traits LIMIT 10000")
        return sorted((profile_pb2.ComputedTraitDefinition.FromString(r.definition) for r in rows), key=lambda d: d.name)

    async def delete_definition(self, name):
        applied, _ = await self.db.execute_lwt("DELETE FROM profile_computed_traits WHERE name = ? IF EXISTS", (name,))
        return applied


class SqliteProfileStore(Repository):
    db: SqliteStore

    async def latest(self, profile_id):
        rows = await self.db.execute("SELECT state, aggregates FROM profile_latest WHERE profile_id = ?", (profile_id,))
        return Latest(profile_pb2.Profile.FromString(rows[0][0]), rows[0][1] or "{}") if rows else None

    async def applied_version(self, profile_id, message_id):
        rows = await self.db.execute(
            "SELECT version FROM profile_applied_events WHERE profile_id = ? AND message_id = ?", (profile_id, message_id)
        )
        return rows[0][0] if rows else None

    async def save(self, stored, latest):
        s, p = stored.snapshot, latest.profile
        recorded_us = s.recorded_at.ToMicroseconds()

        def work(db) -> None:
            db.execute("INSERT OR REPLACE INTO profile_snapshots (profile_id, version, snapshot, is_full, recorded_us)"
                       " VALUES (?, ?, ?, ?, ?)", (p.profile_id, s.version, s.SerializeToString(), int(stored.full), recorded_us))
            db.execute("INSERT OR REPLACE INTO profile_applied_events VALUES (?, ?, ?)",
                       (p.profile_id, s.cause_message_id, s.version))
            db.execute("INSERT OR REPLACE INTO profile_latest (profile_id, version, state, aggregates, first_month)"
                       " VALUES (?, ?, ?, ?, ?)", (p.profile_id, p.version, p.SerializeToString(), latest.aggregates, None))

        await self.db.transaction(work)

    async def snapshots(self, profile_id, from_version, to_version):
        rows = await self.db.execute(
            "SELECT snapshot, is_full FROM profile_snapshots WHERE profile_id = ? AND version BETWEEN ? AND ? ORDER BY version",
            (profile_id, from_version, to_version),
        )
        return [StoredSnapshot(profile_pb2.Snapshot.FromString(r[0]), bool(r[1])) for r in rows]

    async def list_snapshots(self, profile_id, below_version, limit):
        rows = await self.db.execute(
            "SELECT snapshot FROM profile_snapshots WHERE profile_id = ? AND version < ? ORDER BY version DESC LIMIT ?",
            (profile_id, below_version, limit),
        )
        return [profile_pb2.Snapshot.FromString(row[0]) for row in rows]

    async def version_at(self, profile_id, at_us):
        rows = await self.db.execute(
            "SELECT max(version) FROM profile_snapshots WHERE profile_id = ? AND recorded_us <= ?", (profile_id, at_us)
        )
        return rows[0][0] or 0

    async def index_identifier(self, id_type, id_value, profile_id):
        await self.db.execute("INSERT OR REPLACE INTO profile_identifiers VALUES (?, ?, ?)", (id_type, id_value, profile_id))

    async def profile_of(self, id_type, id_value):
        rows = await self.db.execute(
            "SELECT profile_id FROM profile_identifiers WHERE id_type = ? AND id_value = ?", (id_type, id_value)
        )
        return rows[0][0] if rows else None

    async def archive(self, profile_id, event, name, ttl_seconds):
        at = event.timestamp.ToMicroseconds()
        expires = int(datetime.now(timezone.utc).timestamp() * 1e6) + ttl_seconds * 1_000_000
        await self.db.execute(
            "INSERT OR REPLACE INTO profile_events VALUES (?, ?, ?, ?, ?, ?)",
            (profile_id, at, event.message_id, name, event.SerializeToString(), expires),
        )

    async def events(self, profile_id, since_us, until_us, limit):
        now = int(datetime.now(timezone.utc).timestamp() * 1e6)
        rows = await self.db.execute(
            "SELECT event FROM profile_events WHERE profile_id = ? AND event_time_us >= ? AND event_time_us < ?"
            " AND expires_us > ? ORDER BY event_time_us DESC, message_id DESC LIMIT ?",
            (profile_id, since_us, until_us, now, limit),
        )
        return [event_pb2.Event.FromString(r[0]) for r in rows]

    async def scan(self):
        after = ""
        while True:
            rows = await self.db.execute(
                "SELECT profile_id, state FROM profile_latest WHERE profile_id > ? ORDER BY profile_id LIMIT 500", (after,)
            )
            for row in rows:
                yield profile_pb2.Profile.FromString(row[1])
            if len(rows) < 500:
                return
            after = rows[-1][0]

    async def create_definition(self, definition):
        def work(db) -> bool:
            cursor = db.execute("INSERT OR IGNORE INTO profile_computed_traits VALUES (?, ?)",
                                (definition.name, definition.SerializeToString()))
            return cursor.rowcount == 1

        if not await self.db.transaction(work):
            raise AlreadyExists("computed trait", definition.name)

    async def definitions(self):
        rows = await self.db.execute("SELECT definition FROM profile_computed_traits ORDER BY name")
        return [profile_pb2.ComputedTraitDefinition.FromString(r[0]) for r in rows]

    async def delete_definition(self, name):
        def work(db) -> bool:
            return db.execute("DELETE FROM profile_computed_traits WHERE name = ?", (name,)).rowcount == 1

        return await self.db.transaction(work)


async def open_store(settings) -> ProfileStore:
    backend = await open_backend(settings, "profile", CASSANDRA, SQLITE)
    if isinstance(backend, CassandraStore):
        return CassandraProfileStore(backend)
    return SqliteProfileStore(backend)
