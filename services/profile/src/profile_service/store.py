"""Profiles, their history, the event archive and computed-trait definitions.

Per change: first the snapshot, keyed by version (rewriting a version is harmless), and its
time-index row; then, at once (a single-partition batch in Cassandra, a transaction in SQLite),
the applied-event marker (profile, message id) → version that makes a redelivered or
duplicated event a no-op, and the latest profile with its computed-trait partials. A crash
before that leaves an orphan snapshot that the next change of the profile overwrites; a marker
never exists without the state it marks, whatever order events are redelivered in.

The event path writes a batch of changes at once (`save_changes`): per profile, its archived
events, identifier index rows, snapshots and time rows first, grouped into one request per
partition, then all its markers with its last state in one single-partition batch; in SQLite
the whole batch is one transaction. Its reads are one per profile per batch too (`heads`).

Snapshots are partitioned by (profile_id, version // 1000) and the time index by
(profile_id, month), so no partition grows without bound however long a customer lives. The
archive is partitioned by (profile_id, day) and expires with a TTL.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Protocol

from mosaic.events.v1 import resolved_pb2
from mosaic.platform.errors import AlreadyExists
from mosaic.platform.store import Migration, Repository, open_repository
from mosaic.platform.store.cassandra import CassandraStore
from mosaic.platform.store.sqlite import SqliteStore
from mosaic.profile.v1 import profile_pb2

BUCKET = 1000

# An unlogged batch of independent writes holds at most ten partitions (Cassandra warns above
# that: unlogged_batch_across_partitions_warn_threshold) and 32 KiB of values (it refuses
# batches above batch_size_fail_threshold, 50 KiB by default).
PARTITIONS_PER_REQUEST = 10
BYTES_PER_REQUEST = 32 * 1024
# Profiles per multi-partition read of heads.
HEADS_PER_REQUEST = 64

# An applied-event marker must outlive any redelivery: the streams keep events 7 days.
MARKER_TTL = 14 * 86400

CASSANDRA = [
    Migration(
        1,
        (
            # One partition per profile: the latest state in static columns, and the applied-event
            # markers as rows, so a change's marker and state are written by one single-partition
            # batch, atomic and isolated without the batch log.
            "CREATE TABLE IF NOT EXISTS profile_heads ("
            " profile_id text, message_id text, version bigint,"
            " state blob static, aggregates text static, first_month text static, merged_into text static,"
            " PRIMARY KEY (profile_id, message_id))",
            "CREATE TABLE IF NOT EXISTS profile_snapshots ("
            " profile_id text, bucket bigint, version bigint, snapshot blob, is_full boolean,"
            " PRIMARY KEY ((profile_id, bucket), version)) WITH CLUSTERING ORDER BY (version DESC)",
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
        ),
    ),
]
SQLITE = [
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
]


@dataclass
class Latest:
    """The latest profile, with the partials of its computed traits (JSON)."""

    profile: profile_pb2.Profile
    aggregates: str = "{}"
    merged_into: str = ""  # set once identity merged this profile into another


@dataclass
class StoredSnapshot:
    snapshot: profile_pb2.Snapshot
    full: bool


@dataclass
class Change:
    """What one profile's events of a batch write: the snapshots (oldest first), whose causes
    are marked applied (for `marker_ttl` seconds, or for good), the latest state after the
    last, and the events archived and identifiers indexed on the way."""

    latest: Latest
    snapshots: list[StoredSnapshot] = field(default_factory=list)
    archived: list[tuple[resolved_pb2.ResolvedEvent, str]] = field(default_factory=list)  # (event, name)
    identifiers: list[tuple[str, str]] = field(default_factory=list)  # (type, value)
    marker_ttl: int | None = None


def month_of(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, tz=timezone.utc).strftime("%Y-%m")


def _dt(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1e6, tz=timezone.utc)


def _us(value: datetime) -> int:
    return int(value.replace(tzinfo=timezone.utc).timestamp() * 1_000_000)


def _packed(partitions: dict[tuple, list[tuple[str, tuple]]]):
    """The statements of `partitions`, in requests within the limits above, each partition's in order."""
    request: list[tuple[str, tuple]] = []
    keys: set[tuple] = set()
    size = 0
    for key, statements in partitions.items():
        for statement in statements:
            length = sum(len(v) for v in statement[1] if isinstance(v, (bytes, str)))
            if request and (
                size + length > BYTES_PER_REQUEST or (key not in keys and len(keys) == PARTITIONS_PER_REQUEST)
            ):
                yield request
                request, keys, size = [], set(), 0
            request.append(statement)
            keys.add(key)
            size += length
    if request:
        yield request


class ProfileStore(Protocol):
    db: Any  # the backend (Repository.db), for the privacy participant's erasure statements

    async def latest(self, profile_id: str) -> Latest | None: ...
    async def set_merged_into(self, profile_id: str, survivor: str) -> None:
        """Point a merged-away profile at its survivor ("" undoes it, for a split)."""

    async def applied_version(self, profile_id: str, message_id: str) -> int | None: ...
    async def save(self, stored: StoredSnapshot, latest: Latest, marker_ttl: int | None = None) -> None:
        """Append the snapshot, mark its cause applied (for `marker_ttl` seconds, or for good),
        make `latest` the latest."""

    async def heads(self, wanted: dict[str, list[str]]) -> tuple[dict[str, Latest], dict[tuple[str, str], int]]:
        """For profile id → message ids: the latest of each profile that has one, and the
        applied version of each (profile, message id) that is marked applied."""

    async def save_changes(self, changes: list[Change], archive_ttl: int) -> None:
        """Write each change as `save` would its snapshots, with its archived events (kept
        `archive_ttl` seconds) and index rows first."""

    async def snapshots(self, profile_id: str, from_version: int, to_version: int) -> list[StoredSnapshot]:
        """Snapshots with from_version <= version <= to_version, oldest first."""

    async def list_snapshots(self, profile_id: str, below_version: int, limit: int) -> list[profile_pb2.Snapshot]:
        """Snapshots with version < below_version, newest first."""

    async def version_at(self, profile_id: str, at_us: int) -> int:
        """The last version recorded at or before `at_us`; 0 when none."""

    async def index_identifier(self, id_type: str, id_value: str, profile_id: str) -> None: ...
    async def profile_of(self, id_type: str, id_value: str) -> str | None: ...
    async def archive(self, profile_id: str, resolved: resolved_pb2.ResolvedEvent, name: str, ttl_seconds: int) -> None:
        """Keep an event with the identifiers it was resolved by (a split needs them)."""

    async def events(
        self, profile_id: str, since_us: int, until_us: int, limit: int
    ) -> list[resolved_pb2.ResolvedEvent]:
        """Archived events with since_us <= time < until_us, newest first."""

    def scan(self) -> AsyncIterator[profile_pb2.Profile]: ...
    async def create_definition(self, definition: profile_pb2.ComputedTraitDefinition) -> None: ...
    async def definitions(self) -> list[profile_pb2.ComputedTraitDefinition]: ...
    async def delete_definition(self, name: str) -> bool: ...
    async def close(self) -> None: ...


class CassandraProfileStore(Repository):
    db: CassandraStore
    snapshot_ttl = 0  # seconds a snapshot is kept (0: for good); set by open_store

    async def latest(self, profile_id):
        rows = await self.db.execute(
            "SELECT state, aggregates, merged_into FROM profile_heads WHERE profile_id = ? LIMIT 1", (profile_id,)
        )
        if not rows or (rows[0].state is None and not rows[0].merged_into):
            return None
        row = rows[0]
        # A head with no state: merged away before any of its events arrived.
        profile = profile_pb2.Profile.FromString(row.state) if row.state else profile_pb2.Profile(profile_id=profile_id)
        return Latest(profile, row.aggregates or "{}", row.merged_into or "")

    async def set_merged_into(self, profile_id, survivor):
        await self.db.execute("UPDATE profile_heads SET merged_into = ? WHERE profile_id = ?", (survivor, profile_id))

    async def applied_version(self, profile_id, message_id):
        rows = await self.db.execute(
            "SELECT version FROM profile_heads WHERE profile_id = ? AND message_id = ?", (profile_id, message_id)
        )
        return rows[0].version if rows and rows[0].version is not None else None

    async def save(self, stored, latest, marker_ttl=None):
        await self.save_changes([Change(latest, [stored], marker_ttl=marker_ttl)], 0)

    async def heads(self, wanted):
        # Multi-partition IN reads: two requests for a whole batch of profiles rather than two per
        # profile, which is what this Python client pays for most; the coordinator fans out to a
        # bounded number of partitions (HEADS_PER_REQUEST).
        ids = list(wanted)
        message_ids = sorted({m for found in wanted.values() for m in found})
        chunks = [ids[i : i + HEADS_PER_REQUEST] for i in range(0, len(ids), HEADS_PER_REQUEST)]
        found = await asyncio.gather(
            *(
                self.db.execute(
                    "SELECT profile_id, state, aggregates, merged_into FROM profile_heads"
                    " WHERE profile_id IN ? PER PARTITION LIMIT 1",
                    (chunk,),
                )
                for chunk in chunks
            ),
            *(
                self.db.execute(
                    "SELECT profile_id, message_id, version FROM profile_heads"
                    " WHERE profile_id IN ? AND message_id IN ?",
                    (chunk, message_ids),
                )
                for chunk in chunks
            ),
        )
        latest = {}
        for row in (row for rows in found[: len(chunks)] for row in rows):
            if row.state is None and not row.merged_into:
                continue
            profile = (
                profile_pb2.Profile.FromString(row.state)
                if row.state
                else profile_pb2.Profile(profile_id=row.profile_id)
            )
            latest[row.profile_id] = Latest(profile, row.aggregates or "{}", row.merged_into or "")
        applied = {
            (row.profile_id, row.message_id): row.version
            for rows in found[len(chunks) :]
            for row in rows
            if row.version is not None and row.message_id in wanted[row.profile_id]
        }
        return latest, applied

    async def save_changes(self, changes, archive_ttl):
        # First what the markers vouch for: archive, index, snapshots and time rows (rewriting any
        # of them is harmless), packed into unlogged batches of a few partitions each: a request
        # costs this Python client far more than a row. Then, per profile, its markers and its
        # state in one single-partition batch: a marker never exists without the state it marks,
        # whatever order a crash and redelivery bring events back in.
        partitions: dict[tuple, list[tuple[str, tuple]]] = {}
        for change in changes:
            for key, statement in self._rows(change, archive_ttl, self.snapshot_ttl):
                partitions.setdefault(key, []).append(statement)
        requests = list(_packed(partitions))
        await asyncio.gather(
            *(self.db.execute(*r[0]) if len(r) == 1 else self.db.execute_together(r) for r in requests)
        )
        await asyncio.gather(*(self.db.execute_atomic(self._head(change), single_partition=True) for change in changes))

    @staticmethod
    def _rows(change: Change, archive_ttl: int, snapshot_ttl: int):
        """(partition, statement) of everything a change writes before its head."""
        pid = change.latest.profile.profile_id
        for resolved, name in change.archived:
            event = resolved.event
            at = _dt(event.timestamp.ToMicroseconds())
            day = at.strftime("%Y-%m-%d")
            yield (
                ("events", pid, day),
                (
                    "INSERT INTO profile_events (profile_id, day, event_time, message_id, name, event) VALUES (?, ?, ?, ?, ?, ?)"
                    " USING TTL ?",
                    (pid, day, at, event.message_id, name, resolved.SerializeToString(), archive_ttl),
                ),
            )
        for id_type, id_value in change.identifiers:
            yield (
                ("identifiers", id_type, id_value),
                (
                    "INSERT INTO profile_identifiers (id_type, id_value, profile_id) VALUES (?, ?, ?)",
                    (id_type, id_value, pid),
                ),
            )
        for stored in change.snapshots:
            s = stored.snapshot
            recorded_us = s.recorded_at.ToMicroseconds()
            yield (
                ("snapshots", pid, s.version // BUCKET),
                (
                    "INSERT INTO profile_snapshots (profile_id, bucket, version, snapshot, is_full) VALUES (?, ?, ?, ?, ?)"
                    " USING TTL ?",
                    (pid, s.version // BUCKET, s.version, s.SerializeToString(), stored.full, snapshot_ttl),
                ),
            )
            yield (
                ("times", pid, month_of(recorded_us)),
                (
                    "INSERT INTO profile_snapshot_times (profile_id, month, recorded_at, version) VALUES (?, ?, ?, ?)"
                    " USING TTL ?",
                    (pid, month_of(recorded_us), _dt(recorded_us), s.version, snapshot_ttl),
                ),
            )

    @staticmethod
    def _head(change: Change) -> list[tuple[str, tuple]]:
        """The markers of a change's snapshots and its state: one partition."""
        p = change.latest.profile
        head: list[tuple[str, tuple]] = [
            (
                "INSERT INTO profile_heads (profile_id, message_id, version) VALUES (?, ?, ?) USING TTL ?",
                (p.profile_id, stored.snapshot.cause_message_id, stored.snapshot.version, change.marker_ttl or 0),
            )
            for stored in change.snapshots
        ]
        first = [stored.snapshot for stored in change.snapshots if stored.snapshot.version == 1]
        if first:  # where the time index starts, for GetProfileAt
            head.append(
                (
                    "UPDATE profile_heads SET state = ?, aggregates = ?, first_month = ? WHERE profile_id = ?",
                    (
                        p.SerializeToString(),
                        change.latest.aggregates,
                        month_of(first[0].recorded_at.ToMicroseconds()),
                        p.profile_id,
                    ),
                )
            )
        else:
            head.append(
                (
                    "UPDATE profile_heads SET state = ?, aggregates = ? WHERE profile_id = ?",
                    (p.SerializeToString(), change.latest.aggregates, p.profile_id),
                )
            )
        return head

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
        rows = await self.db.execute(
            "SELECT first_month FROM profile_heads WHERE profile_id = ? LIMIT 1", (profile_id,)
        )
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
            "INSERT INTO profile_identifiers (id_type, id_value, profile_id) VALUES (?, ?, ?)",
            (id_type, id_value, profile_id),
        )

    async def profile_of(self, id_type, id_value):
        rows = await self.db.execute(
            "SELECT profile_id FROM profile_identifiers WHERE id_type = ? AND id_value = ?", (id_type, id_value)
        )
        return rows[0].profile_id if rows else None

    async def archive(self, profile_id, resolved, name, ttl_seconds):
        event = resolved.event
        at = event.timestamp.ToMicroseconds()
        await self.db.execute(
            "INSERT INTO profile_events (profile_id, day, event_time, message_id, name, event) VALUES (?, ?, ?, ?, ?, ?)"
            " USING TTL ?",
            (
                profile_id,
                _dt(at).strftime("%Y-%m-%d"),
                _dt(at),
                event.message_id,
                name,
                resolved.SerializeToString(),
                ttl_seconds,
            ),
        )

    async def events(self, profile_id, since_us, until_us, limit):
        found: list[resolved_pb2.ResolvedEvent] = []
        day, first = _dt(until_us - 1).date(), _dt(since_us).date()
        while day >= first and len(found) < limit:
            rows = await self.db.execute(
                "SELECT event FROM profile_events WHERE profile_id = ? AND day = ? AND event_time >= ? AND event_time < ? LIMIT ?",
                (profile_id, day.strftime("%Y-%m-%d"), _dt(since_us), _dt(until_us), limit - len(found)),
            )
            found.extend(resolved_pb2.ResolvedEvent.FromString(r.event) for r in rows)
            day = day.fromordinal(day.toordinal() - 1)
        return found

    async def scan(self):
        token = -(2**63)
        while True:
            rows = await self.db.execute(
                "SELECT token(profile_id) AS t, state FROM profile_heads WHERE token(profile_id) > ?"
                " PER PARTITION LIMIT 1 LIMIT 500",
                (token,),
            )
            for row in rows:
                if row.state:
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
        return sorted(
            (profile_pb2.ComputedTraitDefinition.FromString(r.definition) for r in rows), key=lambda d: d.name
        )

    async def delete_definition(self, name):
        applied, _ = await self.db.execute_lwt("DELETE FROM profile_computed_traits WHERE name = ? IF EXISTS", (name,))
        return applied


class SqliteProfileStore(Repository):
    """The same contract on SQLite; markers need no expiry here (one transaction per change).
    Snapshots and archived events carry their expiry; reads skip what is past it and `sweep`
    deletes it."""

    db: SqliteStore
    snapshot_ttl = 0

    async def latest(self, profile_id):
        rows = await self.db.execute(
            "SELECT state, aggregates, merged_into FROM profile_latest WHERE profile_id = ?", (profile_id,)
        )
        if not rows:
            return None
        state, aggregates, merged_into = rows[0]
        profile = profile_pb2.Profile.FromString(state) if state else profile_pb2.Profile(profile_id=profile_id)
        return Latest(profile, aggregates or "{}", merged_into or "")

    async def set_merged_into(self, profile_id, survivor):
        await self.db.execute(
            "INSERT INTO profile_latest (profile_id, version, merged_into) VALUES (?, 0, ?)"
            " ON CONFLICT (profile_id) DO UPDATE SET merged_into = excluded.merged_into",
            (profile_id, survivor),
        )

    async def applied_version(self, profile_id, message_id):
        rows = await self.db.execute(
            "SELECT version FROM profile_applied_events WHERE profile_id = ? AND message_id = ?",
            (profile_id, message_id),
        )
        return rows[0][0] if rows else None

    async def save(self, stored, latest, marker_ttl=None):
        await self.save_changes([Change(latest, [stored], marker_ttl=marker_ttl)], 0)

    async def heads(self, wanted):
        ids = list(wanted)
        message_ids = sorted({m for found in wanted.values() for m in found})
        if not ids:
            return {}, {}

        def read(db) -> tuple[list, list]:
            marks = ", ".join("?" * len(ids))
            latest = db.execute(
                f"SELECT profile_id, state, aggregates, merged_into FROM profile_latest WHERE profile_id IN ({marks})",
                ids,
            ).fetchall()
            # Both columns of the key by IN lists: index lookups; the few pairs not asked for are dropped below.
            applied = (
                db.execute(
                    f"SELECT profile_id, message_id, version FROM profile_applied_events WHERE profile_id IN ({marks})"
                    f" AND message_id IN ({', '.join('?' * len(message_ids))})",
                    [*ids, *message_ids],
                ).fetchall()
                if message_ids
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
        return latest, {(pid, m): version for pid, m, version in applied if m in wanted[pid]}

    async def save_changes(self, changes, archive_ttl):
        now = int(datetime.now(timezone.utc).timestamp() * 1e6)
        expires = now + archive_ttl * 1_000_000
        snapshot_expires = now + self.snapshot_ttl * 1_000_000 if self.snapshot_ttl else None
        events, identifiers, snapshots, markers, states = [], [], [], [], []
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

    async def snapshots(self, profile_id, from_version, to_version):
        rows = await self.db.execute(
            "SELECT snapshot, is_full FROM profile_snapshots WHERE profile_id = ? AND version BETWEEN ? AND ?"
            f" AND {_KEPT} ORDER BY version",
            (profile_id, from_version, to_version, _now_us()),
        )
        return [StoredSnapshot(profile_pb2.Snapshot.FromString(r[0]), bool(r[1])) for r in rows]

    async def list_snapshots(self, profile_id, below_version, limit):
        rows = await self.db.execute(
            f"SELECT snapshot FROM profile_snapshots WHERE profile_id = ? AND version < ? AND {_KEPT}"
            " ORDER BY version DESC LIMIT ?",
            (profile_id, below_version, _now_us(), limit),
        )
        return [profile_pb2.Snapshot.FromString(row[0]) for row in rows]

    async def version_at(self, profile_id, at_us):
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

    async def index_identifier(self, id_type, id_value, profile_id):
        await self.db.execute(
            "INSERT OR REPLACE INTO profile_identifiers VALUES (?, ?, ?)", (id_type, id_value, profile_id)
        )

    async def profile_of(self, id_type, id_value):
        rows = await self.db.execute(
            "SELECT profile_id FROM profile_identifiers WHERE id_type = ? AND id_value = ?", (id_type, id_value)
        )
        return rows[0][0] if rows else None

    async def archive(self, profile_id, resolved, name, ttl_seconds):
        event = resolved.event
        at = event.timestamp.ToMicroseconds()
        expires = int(datetime.now(timezone.utc).timestamp() * 1e6) + ttl_seconds * 1_000_000
        await self.db.execute(
            "INSERT OR REPLACE INTO profile_events VALUES (?, ?, ?, ?, ?, ?)",
            (profile_id, at, event.message_id, name, resolved.SerializeToString(), expires),
        )

    async def events(self, profile_id, since_us, until_us, limit):
        now = int(datetime.now(timezone.utc).timestamp() * 1e6)
        rows = await self.db.execute(
            "SELECT event FROM profile_events WHERE profile_id = ? AND event_time_us >= ? AND event_time_us < ?"
            " AND expires_us > ? ORDER BY event_time_us DESC, message_id DESC LIMIT ?",
            (profile_id, since_us, until_us, now, limit),
        )
        return [resolved_pb2.ResolvedEvent.FromString(r[0]) for r in rows]

    async def scan(self):
        after = ""
        while True:
            rows = await self.db.execute(
                "SELECT profile_id, state FROM profile_latest WHERE profile_id > ? ORDER BY profile_id LIMIT 500",
                (after,),
            )
            for row in rows:
                if row[1]:
                    yield profile_pb2.Profile.FromString(row[1])
            if len(rows) < 500:
                return
            after = rows[-1][0]

    async def create_definition(self, definition):
        def work(db) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO profile_computed_traits VALUES (?, ?)",
                (definition.name, definition.SerializeToString()),
            )
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


# A snapshot the embedded store still holds but whose expiry has passed is not read.
_KEPT = "(expires_us IS NULL OR expires_us > ?)"


def _now_us() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1e6)


async def open_store(settings, snapshot_ttl: int = 0) -> ProfileStore:
    """The profile store; snapshots (and their time index) are kept `snapshot_ttl` seconds (0: for good)."""
    store = await open_repository(
        settings, "profile", cassandra=(CASSANDRA, CassandraProfileStore), sqlite=(SQLITE, SqliteProfileStore)
    )
    store.snapshot_ttl = snapshot_ttl
    return store
