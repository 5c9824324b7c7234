"""The profile store on SQLite (see base.py for what is kept and why)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import AsyncIterator

from mosaic.events.v1 import resolved_pb2
from mosaic.platform.errors import AlreadyExists
from mosaic.platform.store import Migration, Repository
from mosaic.platform.store.sqlite import SqliteStore
from mosaic.profile.v1 import profile_pb2
from profile_service.store.base import ProfileStore
from profile_service.store.model import Change, Latest, StoredSnapshot, erasure_key

MIGRATIONS = [
    Migration(
        1,
        (
            "CREATE TABLE profile_latest (profile_id TEXT PRIMARY KEY, version INTEGER, state BLOB, aggregates TEXT,"
            " merged_into TEXT)",
            "CREATE TABLE profile_snapshots (profile_id TEXT, version INTEGER, snapshot BLOB, is_full INTEGER,"
            " recorded_us INTEGER, PRIMARY KEY (profile_id, version))",
            "CREATE INDEX profile_snapshots_time ON profile_snapshots (profile_id, recorded_us)",
            "CREATE TABLE profile_applied_events (profile_id TEXT, message_id TEXT, version INTEGER,"
            " PRIMARY KEY (profile_id, message_id))",
            "CREATE TABLE profile_identifiers (id_type TEXT, id_value TEXT, profile_id TEXT, PRIMARY KEY (id_type, id_value))",
            "CREATE TABLE profile_events (profile_id TEXT, event_time_us INTEGER, message_id TEXT, name TEXT, event BLOB,"
            " expires_us INTEGER, PRIMARY KEY (profile_id, event_time_us, message_id))",
            "CREATE TABLE profile_computed_traits (name TEXT PRIMARY KEY, definition BLOB)",
        ),
    ),
    Migration(
        2,
        (
            # Retention (mosaic.platform.retention): when a snapshot expires (NULL: kept), and
            # indexes for the sweeper.
            "ALTER TABLE profile_snapshots ADD COLUMN expires_us INTEGER",
            "CREATE INDEX profile_snapshots_expiry ON profile_snapshots (expires_us)",
            "CREATE INDEX profile_events_expiry ON profile_events (expires_us)",
        ),
    ),
    Migration(3, ("CREATE TABLE profile_erasures (id_hash TEXT PRIMARY KEY, erased_us INTEGER)",)),
    Migration(
        4,
        (
            "CREATE TABLE profile_backfills (name TEXT, created_us INTEGER, partition INTEGER,"
            " sequence INTEGER, PRIMARY KEY (name, created_us, partition))",
        ),
    ),
]


# A snapshot the embedded store still holds but whose expiry has passed is not read.
_KEPT = "(expires_us IS NULL OR expires_us > ?)"


def _now_us() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1e6)


class SqliteProfileStore(Repository, ProfileStore):
    """The same contract on SQLite; markers need no expiry here (one transaction per change).
    Snapshots and archived events carry their expiry; reads skip what is past it and `sweep`
    deletes it."""

    db: SqliteStore
    snapshot_ttl = 0

    async def latest(self, profile_id: str) -> Latest | None:
        rows = await self.db.execute(
            "SELECT state, aggregates, merged_into FROM profile_latest WHERE profile_id = ?", (profile_id,)
        )
        if not rows:
            return None
        state, aggregates, merged_into = rows[0]
        profile = profile_pb2.Profile.FromString(state) if state else profile_pb2.Profile(profile_id=profile_id)
        return Latest(profile, aggregates or "{}", merged_into or "")

    async def set_merged_into(self, profile_id: str, survivor: str) -> None:
        await self.db.execute(
            "INSERT INTO profile_latest (profile_id, version, merged_into) VALUES (?, 0, ?)"
            " ON CONFLICT (profile_id) DO UPDATE SET merged_into = excluded.merged_into",
            (profile_id, survivor),
        )

    async def applied_version(self, profile_id: str, message_id: str) -> int | None:
        rows = await self.db.execute(
            "SELECT version FROM profile_applied_events WHERE profile_id = ? AND message_id = ?",
            (profile_id, message_id),
        )
        return rows[0][0] if rows else None

    async def save(self, stored: StoredSnapshot, latest: Latest, marker_ttl: int | None = None) -> None:
        await self.save_changes([Change(latest, [stored], marker_ttl=marker_ttl)], 0)

    async def heads(self, wanted: dict[str, list[str]]) -> tuple[dict[str, Latest], dict[tuple[str, str], int]]:
        ids = list(wanted)
        if not ids:
            return {}, {}
        pairs = [(pid, m) for pid, found in wanted.items() for m in dict.fromkeys(found)]

        def read(db) -> tuple[list, list]:
            marks = ", ".join("?" * len(ids))
            latest = db.execute(
                f"SELECT profile_id, state, aggregates, merged_into FROM profile_latest WHERE profile_id IN ({marks})",
                ids,
            ).fetchall()
            # One primary-key lookup per wanted pair, joined from a VALUES list: `profile_id IN
            # (...) AND message_id IN (...)` probed every id with every message id (a batch of 256
            # took ~17 ms; `python -m bench profile_heads`), and a row-value IN scanned the table.
            applied = (
                db.execute(
                    f"WITH wanted(p, m) AS (VALUES {', '.join(['(?, ?)'] * len(pairs))})"
                    " SELECT profile_id, message_id, version FROM wanted"
                    " CROSS JOIN profile_applied_events ON profile_id = wanted.p AND message_id = wanted.m",
                    [value for pair in pairs for value in pair],
                ).fetchall()
                if pairs
                else []
            )
            return latest, applied

        rows, applied = await self.db.transaction(read)  # both reads on the store thread, in one hop
        latest = {
            pid: Latest(
                profile_pb2.Profile.FromString(state) if state else profile_pb2.Profile(profile_id=pid),
                aggregates or "{}",
                merged_into or "",
            )
            for pid, state, aggregates, merged_into in rows
        }
        return latest, {(pid, m): version for pid, m, version in applied}

    async def save_changes(self, changes: list[Change], archive_ttl: int) -> None:
        now = int(datetime.now(timezone.utc).timestamp() * 1e6)
        expires = now + archive_ttl * 1_000_000
        snapshot_expires = now + self.snapshot_ttl * 1_000_000 if self.snapshot_ttl else None
        events: list[tuple] = []
        identifiers: list[tuple[str, str, str]] = []
        snapshots, markers, states = [], [], []
        for change in changes:
            p = change.latest.profile
            events.extend(
                (
                    p.profile_id,
                    r.event.timestamp.ToMicroseconds(),
                    r.event.message_id,
                    name,
                    r.SerializeToString(),
                    expires,
                )
                for r, name in change.archived
            )
            identifiers.extend((t, v, p.profile_id) for t, v in change.identifiers)
            for stored in change.snapshots:
                s = stored.snapshot
                snapshots.append(
                    (
                        p.profile_id,
                        s.version,
                        s.SerializeToString(),
                        int(stored.full),
                        s.recorded_at.ToMicroseconds(),
                        snapshot_expires,
                    )
                )
                markers.append((p.profile_id, s.cause_message_id, s.version))
            states.append((p.profile_id, p.version, p.SerializeToString(), change.latest.aggregates))

        def work(db) -> None:  # one transaction: all of the batch, or none of it
            db.executemany("INSERT OR REPLACE INTO profile_events VALUES (?, ?, ?, ?, ?, ?)", events)
            db.executemany("INSERT OR REPLACE INTO profile_identifiers VALUES (?, ?, ?)", identifiers)
            db.executemany(
                "INSERT OR REPLACE INTO profile_snapshots (profile_id, version, snapshot, is_full, recorded_us, expires_us)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                snapshots,
            )
            db.executemany("INSERT OR REPLACE INTO profile_applied_events VALUES (?, ?, ?)", markers)
            # An upsert, not a replace: merged_into is another writer's column.
            db.executemany(
                "INSERT INTO profile_latest (profile_id, version, state, aggregates) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (profile_id) DO UPDATE SET version = excluded.version, state = excluded.state,"
                " aggregates = excluded.aggregates",
                states,
            )

        await self.db.transaction(work)

    async def snapshots(self, profile_id: str, from_version: int, to_version: int) -> list[StoredSnapshot]:
        rows = await self.db.execute(
            "SELECT snapshot, is_full FROM profile_snapshots WHERE profile_id = ? AND version BETWEEN ? AND ?"
            f" AND {_KEPT} ORDER BY version",
            (profile_id, from_version, to_version, _now_us()),
        )
        return [StoredSnapshot(profile_pb2.Snapshot.FromString(r[0]), bool(r[1])) for r in rows]

    async def list_snapshots(self, profile_id: str, below_version: int, limit: int) -> list[profile_pb2.Snapshot]:
        rows = await self.db.execute(
            f"SELECT snapshot FROM profile_snapshots WHERE profile_id = ? AND version < ? AND {_KEPT}"
            " ORDER BY version DESC LIMIT ?",
            (profile_id, below_version, _now_us(), limit),
        )
        return [profile_pb2.Snapshot.FromString(row[0]) for row in rows]

    async def version_at(self, profile_id: str, at_us: int) -> int:
        rows = await self.db.execute(
            f"SELECT max(version) FROM profile_snapshots WHERE profile_id = ? AND recorded_us <= ? AND {_KEPT}",
            (profile_id, at_us, _now_us()),
        )
        return rows[0][0] or 0

    async def sweep(self, now_us: int) -> dict[str, int]:
        """Delete the archived events and snapshots past their expiry; rows removed by kind."""

        def work(db) -> dict[str, int]:
            events = db.execute("DELETE FROM profile_events WHERE expires_us <= ?", (now_us,)).rowcount
            snapshots = db.execute(
                "DELETE FROM profile_snapshots WHERE expires_us IS NOT NULL AND expires_us <= ?", (now_us,)
            ).rowcount
            return {"events": events, "snapshots": snapshots}

        return await self.db.transaction(work)

    async def index_identifier(self, id_type: str, id_value: str, profile_id: str) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO profile_identifiers VALUES (?, ?, ?)", (id_type, id_value, profile_id)
        )

    async def profile_of(self, id_type: str, id_value: str) -> str | None:
        rows = await self.db.execute(
            "SELECT profile_id FROM profile_identifiers WHERE id_type = ? AND id_value = ?", (id_type, id_value)
        )
        return rows[0][0] if rows else None

    async def archive(self, profile_id: str, resolved: resolved_pb2.ResolvedEvent, name: str, ttl_seconds: int) -> None:
        event = resolved.event
        at = event.timestamp.ToMicroseconds()
        expires = int(datetime.now(timezone.utc).timestamp() * 1e6) + ttl_seconds * 1_000_000
        await self.db.execute(
            "INSERT OR REPLACE INTO profile_events VALUES (?, ?, ?, ?, ?, ?)",
            (profile_id, at, event.message_id, name, resolved.SerializeToString(), expires),
        )

    async def events(
        self, profile_id: str, since_us: int, until_us: int, limit: int
    ) -> list[resolved_pb2.ResolvedEvent]:
        now = int(datetime.now(timezone.utc).timestamp() * 1e6)
        rows = await self.db.execute(
            "SELECT event FROM profile_events WHERE profile_id = ? AND event_time_us >= ? AND event_time_us < ?"
            " AND expires_us > ? ORDER BY event_time_us DESC, message_id DESC LIMIT ?",
            (profile_id, since_us, until_us, now, limit),
        )
        return [resolved_pb2.ResolvedEvent.FromString(r[0]) for r in rows]

    async def record_erasure(self, profile_id: str) -> None:
        await self.db.execute(
            "INSERT OR IGNORE INTO profile_erasures VALUES (?, ?)", (erasure_key(profile_id), _now_us())
        )

    async def erased(self, profile_ids: list[str]) -> set[str]:
        if not profile_ids:
            return set()
        keys = {erasure_key(pid): pid for pid in profile_ids}
        rows = await self.db.execute(
            f"SELECT id_hash FROM profile_erasures WHERE id_hash IN ({', '.join('?' * len(keys))})", list(keys)
        )
        return {keys[row[0]] for row in rows}

    async def scan(
        self, keep: Callable[[str], bool] | None = None, into: Callable[[], profile_pb2.Profile] = profile_pb2.Profile
    ) -> AsyncIterator[tuple[profile_pb2.Profile, str]]:
        after = ""
        while True:
            rows = await self.db.execute(
                "SELECT profile_id, state, merged_into FROM profile_latest WHERE profile_id > ?"
                " ORDER BY profile_id LIMIT 500",
                (after,),
            )
            for row in rows:
                if row[1] and (keep is None or keep(row[0])):
                    profile = into()
                    profile.MergeFromString(row[1])
                    yield profile, row[2] or ""
            if len(rows) < 500:
                return
            after = rows[-1][0]

    async def create_definition(self, definition: profile_pb2.ComputedTraitDefinition) -> None:
        def work(db) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO profile_computed_traits VALUES (?, ?)",
                (definition.name, definition.SerializeToString()),
            )
            return cursor.rowcount == 1

        if not await self.db.transaction(work):
            raise AlreadyExists("computed trait", definition.name)

    async def definitions(self) -> list[profile_pb2.ComputedTraitDefinition]:
        rows = await self.db.execute("SELECT definition FROM profile_computed_traits ORDER BY name")
        return [profile_pb2.ComputedTraitDefinition.FromString(r[0]) for r in rows]

    async def delete_definition(self, name: str) -> bool:
        def work(db) -> bool:
            db.execute("DELETE FROM profile_backfills WHERE name = ?", (name,))
            return db.execute("DELETE FROM profile_computed_traits WHERE name = ?", (name,)).rowcount == 1

        return await self.db.transaction(work)

    async def backfills(self, definition: profile_pb2.ComputedTraitDefinition) -> dict[int, int]:
        rows = await self.db.execute(
            "SELECT partition, sequence FROM profile_backfills WHERE name = ? AND created_us = ?",
            (definition.name, definition.created_at.ToMicroseconds()),
        )
        return dict(rows)

    async def set_backfilled(
        self, definition: profile_pb2.ComputedTraitDefinition, partition: int, sequence: int
    ) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO profile_backfills VALUES (?, ?, ?, ?)",
            (definition.name, definition.created_at.ToMicroseconds(), partition, sequence),
        )
