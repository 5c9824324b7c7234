"""The profile store on Cassandra (see base.py for what is kept and why)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timezone
from typing import AsyncIterator

from mosaic.events.v1 import resolved_pb2
from mosaic.platform.errors import AlreadyExists
from mosaic.platform.store import Migration, Repository
from mosaic.platform.store.cassandra import CassandraStore
from mosaic.profile.v1 import profile_pb2
from profile_service.store.base import ProfileStore
from profile_service.store.model import BUCKET, Change, Latest, StoredSnapshot, day_of, erasure_key, month_of

# Profiles per multi-partition read (heads, tombstones).
HEADS_PER_REQUEST = 64


MIGRATIONS = [
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
    Migration(2, ("CREATE TABLE IF NOT EXISTS profile_erasures (id_hash text PRIMARY KEY, erased_at timestamp)",)),
    # One partition per definition: its records are read, and deleted, at once.
    Migration(
        3,
        (
            "CREATE TABLE IF NOT EXISTS profile_backfills (name text, created_us bigint, partition int,"
            " sequence bigint, PRIMARY KEY ((name), created_us, partition))",
        ),
    ),
]


def _chunks(items: list[str]) -> list[list[str]]:
    return [items[i : i + HEADS_PER_REQUEST] for i in range(0, len(items), HEADS_PER_REQUEST)]


def _dt(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1e6, tz=timezone.utc)


class CassandraProfileStore(Repository, ProfileStore):
    db: CassandraStore
    snapshot_ttl = 0  # seconds a snapshot is kept (0: for good); set by open_store

    async def latest(self, profile_id: str) -> Latest | None:
        rows = await self.db.execute(
            "SELECT state, aggregates, merged_into FROM profile_heads WHERE profile_id = ? LIMIT 1", (profile_id,)
        )
        if not rows or (rows[0].state is None and not rows[0].merged_into):
            return None
        row = rows[0]
        # A head with no state: merged away before any of its events arrived.
        profile = profile_pb2.Profile.FromString(row.state) if row.state else profile_pb2.Profile(profile_id=profile_id)
        return Latest(profile, row.aggregates or "{}", row.merged_into or "")

    async def set_merged_into(self, profile_id: str, survivor: str) -> None:
        await self.db.execute("UPDATE profile_heads SET merged_into = ? WHERE profile_id = ?", (survivor, profile_id))

    async def applied_version(self, profile_id: str, message_id: str) -> int | None:
        rows = await self.db.execute(
            "SELECT version FROM profile_heads WHERE profile_id = ? AND message_id = ?", (profile_id, message_id)
        )
        return rows[0].version if rows and rows[0].version is not None else None

    async def save(self, stored: StoredSnapshot, latest: Latest, marker_ttl: int | None = None) -> None:
        await self.save_changes([Change(latest, [stored], marker_ttl=marker_ttl)], 0)

    async def heads(self, wanted: dict[str, list[str]]) -> tuple[dict[str, Latest], dict[tuple[str, str], int]]:
        # Multi-partition IN reads: two requests for a whole batch of profiles rather than two per
        # profile, which is what this Python client pays for most; the coordinator fans out to a
        # bounded number of partitions (HEADS_PER_REQUEST). A chunk asks only for its own
        # profiles' message ids: the node reads every id listed in every partition listed.
        ids = list(wanted)
        chunks = _chunks(ids)
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
                    (chunk, sorted({m for pid in chunk for m in wanted[pid]})),
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

    async def save_changes(self, changes: list[Change], archive_ttl: int) -> None:
        # First what the markers vouch for: archive, index, snapshots and time rows (rewriting any
        # of them is harmless), packed into unlogged batches of a few partitions each: a request
        # costs this Python client, and the node, far more than a row. Then the heads, packed
        # too: each profile's markers and state one mutation, so a marker never exists without
        # the state it marks, whatever order a crash and redelivery bring events back in.
        partitions: dict[tuple, list[tuple[str, tuple]]] = {}
        for change in changes:
            for key, statement in self._rows(change, archive_ttl, self.snapshot_ttl):
                partitions.setdefault(key, []).append(statement)
        await self.db.execute_partitioned(partitions, atomic=False)
        await self.db.execute_partitioned(
            {change.latest.profile.profile_id: self._head(change) for change in changes}, atomic=True
        )

    @staticmethod
    def _rows(change: Change, archive_ttl: int, snapshot_ttl: int):
        """(partition, statement) of everything a change writes before its head."""
        pid = change.latest.profile.profile_id
        for resolved, name in change.archived:
            event = resolved.event
            micros = event.timestamp.ToMicroseconds()
            at, day = _dt(micros), day_of(micros)
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

    async def snapshots(self, profile_id: str, from_version: int, to_version: int) -> list[StoredSnapshot]:
        found: list[StoredSnapshot] = []
        for bucket in range(from_version // BUCKET, to_version // BUCKET + 1):
            rows = await self.db.execute(
                "SELECT snapshot, is_full FROM profile_snapshots WHERE profile_id = ? AND bucket = ?"
                " AND version >= ? AND version <= ? ORDER BY version ASC",
                (profile_id, bucket, from_version, to_version),
            )
            found.extend(StoredSnapshot(profile_pb2.Snapshot.FromString(r.snapshot), bool(r.is_full)) for r in rows)
        return found

    async def list_snapshots(self, profile_id: str, below_version: int, limit: int) -> list[profile_pb2.Snapshot]:
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

    async def version_at(self, profile_id: str, at_us: int) -> int:
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

    async def index_identifier(self, id_type: str, id_value: str, profile_id: str) -> None:
        await self.db.execute(
            "INSERT INTO profile_identifiers (id_type, id_value, profile_id) VALUES (?, ?, ?)",
            (id_type, id_value, profile_id),
        )

    async def profile_of(self, id_type: str, id_value: str) -> str | None:
        rows = await self.db.execute(
            "SELECT profile_id FROM profile_identifiers WHERE id_type = ? AND id_value = ?", (id_type, id_value)
        )
        return rows[0].profile_id if rows else None

    async def archive(self, profile_id: str, resolved: resolved_pb2.ResolvedEvent, name: str, ttl_seconds: int) -> None:
        event = resolved.event
        at = event.timestamp.ToMicroseconds()
        await self.db.execute(
            "INSERT INTO profile_events (profile_id, day, event_time, message_id, name, event) VALUES (?, ?, ?, ?, ?, ?)"
            " USING TTL ?",
            (
                profile_id,
                day_of(at),
                _dt(at),
                event.message_id,
                name,
                resolved.SerializeToString(),
                ttl_seconds,
            ),
        )

    async def events(
        self, profile_id: str, since_us: int, until_us: int, limit: int
    ) -> list[resolved_pb2.ResolvedEvent]:
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

    async def record_erasure(self, profile_id: str) -> None:
        await self.db.execute(
            "INSERT INTO profile_erasures (id_hash, erased_at) VALUES (?, ?)",
            (erasure_key(profile_id), datetime.now(timezone.utc)),
        )

    async def erased(self, profile_ids: list[str]) -> set[str]:
        keys = {erasure_key(pid): pid for pid in profile_ids}
        found = await asyncio.gather(
            *(
                self.db.execute("SELECT id_hash FROM profile_erasures WHERE id_hash IN ?", (chunk,))
                for chunk in _chunks(list(keys))
            )
        )
        return {keys[row.id_hash] for rows in found for row in rows}

    async def scan(
        self, keep: Callable[[str], bool] | None = None, into: Callable[[], profile_pb2.Profile] = profile_pb2.Profile
    ) -> AsyncIterator[tuple[profile_pb2.Profile, str]]:
        token = -(2**63)
        while True:
            rows = await self.db.execute(
                "SELECT token(profile_id) AS t, profile_id, state, merged_into FROM profile_heads WHERE token(profile_id) > ?"
                " PER PARTITION LIMIT 1 LIMIT 500",
                (token,),
            )
            for row in rows:
                if row.state and (keep is None or keep(row.profile_id)):
                    profile = into()
                    profile.MergeFromString(row.state)
                    yield profile, row.merged_into or ""
            if len(rows) < 500:
                return
            token = rows[-1].t

    async def create_definition(self, definition: profile_pb2.ComputedTraitDefinition) -> None:
        applied, _ = await self.db.execute_lwt(
            "INSERT INTO profile_computed_traits (name, definition) VALUES (?, ?) IF NOT EXISTS",
            (definition.name, definition.SerializeToString()),
        )
        if not applied:
            raise AlreadyExists("computed trait", definition.name)

    async def definitions(self) -> list[profile_pb2.ComputedTraitDefinition]:
        rows = await self.db.execute("SELECT definition FROM profile_computed_traits LIMIT 10000")
        return sorted(
            (profile_pb2.ComputedTraitDefinition.FromString(r.definition) for r in rows), key=lambda d: d.name
        )

    async def delete_definition(self, name: str) -> bool:
        # The records first: a crash between the two leaves a definition to backfill again.
        await self.db.execute("DELETE FROM profile_backfills WHERE name = ?", (name,))
        applied, _ = await self.db.execute_lwt("DELETE FROM profile_computed_traits WHERE name = ? IF EXISTS", (name,))
        return applied

    async def backfills(self, definition: profile_pb2.ComputedTraitDefinition) -> dict[int, int]:
        rows = await self.db.execute(
            "SELECT partition, sequence FROM profile_backfills WHERE name = ? AND created_us = ?",
            (definition.name, definition.created_at.ToMicroseconds()),
        )
        return {row.partition: row.sequence for row in rows}

    async def set_backfilled(
        self, definition: profile_pb2.ComputedTraitDefinition, partition: int, sequence: int
    ) -> None:
        await self.db.execute(
            "INSERT INTO profile_backfills (name, created_us, partition, sequence) VALUES (?, ?, ?, ?)",
            (definition.name, definition.created_at.ToMicroseconds(), partition, sequence),
        )
