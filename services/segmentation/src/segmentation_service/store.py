"""Segments, memberships, transitions, merged profiles, backfill progress and timers.

Timers are kept by (partition, bucket): a bucket is a TIMER_BUCKET-second slice of time, and a
profile's timer sits in the first bucket that starts at or after its due time, so firing a
bucket once its start has passed never fires early. Each partition's cursor is the last bucket
fired, so a restart goes on from there.

A membership is kept twice, by profile (`GetProfileSegments`, `IsMember`) and by segment in
one partition per bus partition (`ListMembers` never reads one unbounded partition), with the
profile version it was decided at: an older version is stale and changes nothing. Every entry
or exit is a transition, keyed by its cause (`v:<revision>:<version>` for a profile change,
`merge:<id>`, `time:<bucket>:...`, `backfill:<revision>:<version>`), written with the membership and a
pending row; the pending row is deleted once the transition is published, so a crash between
the two publishes it again (under the same message id) and never twice as a new transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from mosaic.platform.errors import AlreadyExists, NotFound
from mosaic.platform.store import Migration, Repository, open_repository
from mosaic.platform.store.cassandra import CassandraStore
from mosaic.platform.store.sqlite import SqliteStore
from mosaic.segmentation.v1 import segment_pb2


@dataclass(frozen=True)
class Transition:
    segment_id: str
    profile_id: str
    partition: int
    entered: bool
    version: int
    cause: str

    @property
    def message_id(self) -> str:
        return f"{self.segment_id}:{self.profile_id}:{self.cause}"


CASSANDRA = [
    Migration(
        1,
        (
            "CREATE TABLE IF NOT EXISTS segmentation_segments (segment_id text PRIMARY KEY, definition blob)",
            "CREATE TABLE IF NOT EXISTS segmentation_memberships ("
            " segment_id text, profile_id text, member boolean, profile_version bigint,"
            " PRIMARY KEY ((profile_id), segment_id))",
        ),
    ),
    Migration(
        2,
        (
            "CREATE TABLE IF NOT EXISTS segmentation_members (segment_id text, partition int, profile_id text,"
            " profile_version bigint, PRIMARY KEY ((segment_id, partition), profile_id))",
            "CREATE TABLE IF NOT EXISTS segmentation_transitions (profile_id text, segment_id text, cause text,"
            " entered boolean, profile_version bigint, PRIMARY KEY ((profile_id), segment_id, cause))",
            "CREATE TABLE IF NOT EXISTS segmentation_pending (partition int, profile_id text, segment_id text,"
            " cause text, entered boolean, profile_version bigint, PRIMARY KEY ((partition), profile_id, segment_id, cause))",
            "CREATE TABLE IF NOT EXISTS segmentation_merged (partition int, profile_id text, survivor text,"
            " PRIMARY KEY ((partition), profile_id))",
            "CREATE TABLE IF NOT EXISTS segmentation_backfills (segment_id text, revision bigint, partition int,"
            " PRIMARY KEY ((segment_id), revision, partition))",
        ),
    ),
    Migration(
        3,
        (
            "CREATE TABLE IF NOT EXISTS segmentation_timers (partition int, bucket bigint, profile_id text,"
            " PRIMARY KEY ((partition, bucket), profile_id))",
            "CREATE TABLE IF NOT EXISTS segmentation_timer_cursors (partition int PRIMARY KEY, bucket bigint)",
        ),
    ),
    Migration(
        4,
        (
            "CREATE TABLE IF NOT EXISTS segmentation_sizes (segment_id text, day text, partition int, members bigint,"
            " PRIMARY KEY ((segment_id), day, partition))",
        ),
    ),
]
SQLITE = [
    Migration(
        1,
        (
            "CREATE TABLE segmentation_segments (segment_id TEXT PRIMARY KEY, definition BLOB)",
            "CREATE TABLE segmentation_memberships (segment_id TEXT, profile_id TEXT, member INTEGER,"
            " profile_version INTEGER, PRIMARY KEY (profile_id, segment_id))",
        ),
    ),
    Migration(
        2,
        (
            "CREATE TABLE segmentation_members (segment_id TEXT, partition INTEGER, profile_id TEXT,"
            " profile_version INTEGER, PRIMARY KEY (segment_id, partition, profile_id))",
            "CREATE TABLE segmentation_transitions (profile_id TEXT, segment_id TEXT, cause TEXT, entered INTEGER,"
            " profile_version INTEGER, PRIMARY KEY (profile_id, segment_id, cause))",
            "CREATE TABLE segmentation_pending (partition INTEGER, profile_id TEXT, segment_id TEXT, cause TEXT,"
            " entered INTEGER, profile_version INTEGER, PRIMARY KEY (partition, profile_id, segment_id, cause))",
            "CREATE TABLE segmentation_merged (partition INTEGER, profile_id TEXT, survivor TEXT,"
            " PRIMARY KEY (partition, profile_id))",
            "CREATE TABLE segmentation_backfills (segment_id TEXT, revision INTEGER, partition INTEGER,"
            " PRIMARY KEY (segment_id, revision, partition))",
        ),
    ),
    Migration(
        3,
        (
            "CREATE TABLE segmentation_timers (partition INTEGER, bucket INTEGER, profile_id TEXT,"
            " PRIMARY KEY (partition, bucket, profile_id))",
            "CREATE TABLE segmentation_timer_cursors (partition INTEGER PRIMARY KEY, bucket INTEGER)",
        ),
    ),
    Migration(
        4,
        (
            "CREATE TABLE segmentation_sizes (segment_id TEXT, day TEXT, partition INTEGER, members INTEGER,"
            " PRIMARY KEY (segment_id, day, partition))",
        ),
    ),
]


class SegmentStore(Protocol):
    db: Any  # the backend (Repository.db), for the privacy participant's erasure statements

    async def create(self, segment: segment_pb2.Segment) -> None:
        """Store a new segment; AlreadyExists when the id is taken."""

    async def replace(self, segment: segment_pb2.Segment) -> None:
        """Overwrite an existing segment; NotFound when there is none."""

    async def delete(self, segment_id: str) -> None: ...
    async def get(self, segment_id: str) -> segment_pb2.Segment | None: ...
    async def segments(self) -> list[segment_pb2.Segment]: ...
    async def page(self, after: str, size: int) -> list[segment_pb2.Segment]:
        """Up to `size` segments with ids after `after`, by id."""

    async def membership(self, segment_id: str, profile_id: str) -> tuple[bool, int]:
        """(member, profile version decided at); (False, 0) when never decided."""

    async def set_membership(self, segment_id: str, profile_id: str, member: bool, version: int) -> None:
        """Record a decision without a transition (a profile evaluated and left as it was)."""

    async def profile_memberships(self, profile_id: str) -> dict[str, tuple[bool, int]]: ...
    async def record(self, transition: Transition) -> None:
        """The membership, its by-segment row, the transition and its pending row, together."""

    async def pending(self, partition: int, profile_id: str | None = None) -> list[Transition]: ...
    async def published(self, transition: Transition) -> None: ...
    async def transitions(self, profile_id: str) -> list[Transition]: ...
    async def members(self, segment_id: str, partition: int) -> list[tuple[str, int]]: ...
    async def set_merged(self, partition: int, profile_id: str, survivor: str) -> None:
        """survivor "" clears it (a split)."""

    async def merged(self, partition: int) -> dict[str, str]: ...
    async def backfilled(self, segment_id: str, revision: int) -> set[int]: ...
    async def set_backfilled(self, segment_id: str, revision: int, partition: int) -> None: ...
    async def add_timer(self, partition: int, bucket: int, profile_id: str) -> None: ...
    async def timers(self, partition: int, bucket: int) -> list[str]: ...
    async def drop_timer(self, partition: int, bucket: int, profile_id: str) -> None: ...
    async def timer_cursor(self, partition: int) -> int | None:
        """The last bucket whose timers all fired; None before the first."""

    async def set_timer_cursor(self, partition: int, bucket: int) -> None: ...
    async def set_size(self, segment_id: str, day: str, partition: int, members: int) -> None: ...
    async def sizes(self, segment_id: str, since: str) -> dict[str, int]:
        """Members per day (`YYYY-MM-DD` >= since), summed over the partitions."""

    async def close(self) -> None: ...


class CassandraSegmentStore(Repository):
    db: CassandraStore

    async def create(self, segment):
        applied, _ = await self.db.execute_lwt(
            "INSERT INTO segmentation_segments (segment_id, definition) VALUES (?, ?) IF NOT EXISTS",
            (segment.segment_id, segment.SerializeToString()),
        )
        if not applied:
            raise AlreadyExists("segment", segment.segment_id)

    async def replace(self, segment):
        applied, _ = await self.db.execute_lwt(
            "UPDATE segmentation_segments SET definition = ? WHERE segment_id = ? IF EXISTS",
            (segment.SerializeToString(), segment.segment_id),
        )
        if not applied:
            raise NotFound("segment", segment.segment_id)

    async def delete(self, segment_id):
        await self.db.execute("DELETE FROM segmentation_segments WHERE segment_id = ?", (segment_id,))

    async def get(self, segment_id):
        rows = await self.db.execute("SELECT definition FROM segmentation_segments WHERE segment_id = ?", (segment_id,))
        return segment_pb2.Segment.FromString(rows[0].definition) if rows else None

    async def segments(self):
        rows = await self.db.execute("SELECT definition FROM segmentation_segments LIMIT 100000")
        return sorted((segment_pb2.Segment.FromString(r.definition) for r in rows), key=lambda s: s.segment_id)

    async def page(self, after, size):
        # Ids are few (thousands); the partition order is by token, so sort after reading.
        return [s for s in await self.segments() if s.segment_id > after][:size]

    async def membership(self, segment_id, profile_id):
        rows = await self.db.execute(
            "SELECT member, profile_version FROM segmentation_memberships WHERE profile_id = ? AND segment_id = ?",
            (profile_id, segment_id),
        )
        return (rows[0].member, rows[0].profile_version) if rows else (False, 0)

    async def set_membership(self, segment_id, profile_id, member, version):
        await self.db.execute(
            "INSERT INTO segmentation_memberships (segment_id, profile_id, member, profile_version) VALUES (?, ?, ?, ?)",
            (segment_id, profile_id, member, version),
        )

    async def profile_memberships(self, profile_id):
        rows = await self.db.execute(
            "SELECT segment_id, member, profile_version FROM segmentation_memberships WHERE profile_id = ?",
            (profile_id,),
        )
        return {r.segment_id: (r.member, r.profile_version) for r in rows}

    async def record(self, t):
        statements = [
            (
                "INSERT INTO segmentation_memberships (segment_id, profile_id, member, profile_version) VALUES (?, ?, ?, ?)",
                (t.segment_id, t.profile_id, t.entered, t.version),
            ),
            (
                "INSERT INTO segmentation_transitions (profile_id, segment_id, cause, entered, profile_version)"
                " VALUES (?, ?, ?, ?, ?)",
                (t.profile_id, t.segment_id, t.cause, t.entered, t.version),
            ),
            (
                "INSERT INTO segmentation_pending (partition, profile_id, segment_id, cause, entered, profile_version)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (t.partition, t.profile_id, t.segment_id, t.cause, t.entered, t.version),
            ),
        ]
        if t.entered:
            statements.append(
                (
                    "INSERT INTO segmentation_members (segment_id, partition, profile_id, profile_version)"
                    " VALUES (?, ?, ?, ?)",
                    (t.segment_id, t.partition, t.profile_id, t.version),
                )
            )
        else:
            statements.append(
                (
                    "DELETE FROM segmentation_members WHERE segment_id = ? AND partition = ? AND profile_id = ?",
                    (t.segment_id, t.partition, t.profile_id),
                )
            )
        await self.db.execute_atomic(statements)

    async def pending(self, partition, profile_id=None):
        query = (
            "SELECT profile_id, segment_id, cause, entered, profile_version FROM segmentation_pending"
            " WHERE partition = ?"
        )
        args: tuple = (partition,)
        if profile_id is not None:
            query, args = query + " AND profile_id = ?", (partition, profile_id)
        rows = await self.db.execute(query, args)
        return [Transition(r.segment_id, r.profile_id, partition, r.entered, r.profile_version, r.cause) for r in rows]

    async def published(self, t):
        await self.db.execute(
            "DELETE FROM segmentation_pending WHERE partition = ? AND profile_id = ? AND segment_id = ? AND cause = ?",
            (t.partition, t.profile_id, t.segment_id, t.cause),
        )

    async def transitions(self, profile_id):
        rows = await self.db.execute(
            "SELECT segment_id, cause, entered, profile_version FROM segmentation_transitions WHERE profile_id = ?",
            (profile_id,),
        )
        return [Transition(r.segment_id, profile_id, -1, r.entered, r.profile_version, r.cause) for r in rows]

    async def members(self, segment_id, partition):
        rows = await self.db.execute(
            "SELECT profile_id, profile_version FROM segmentation_members WHERE segment_id = ? AND partition = ?",
            (segment_id, partition),
        )
        return [(r.profile_id, r.profile_version) for r in rows]

    async def set_merged(self, partition, profile_id, survivor):
        if survivor:
            await self.db.execute(
                "INSERT INTO segmentation_merged (partition, profile_id, survivor) VALUES (?, ?, ?)",
                (partition, profile_id, survivor),
            )
        else:
            await self.db.execute(
                "DELETE FROM segmentation_merged WHERE partition = ? AND profile_id = ?", (partition, profile_id)
            )

    async def merged(self, partition):
        rows = await self.db.execute(
            "SELECT profile_id, survivor FROM segmentation_merged WHERE partition = ?", (partition,)
        )
        return {r.profile_id: r.survivor for r in rows}

    async def backfilled(self, segment_id, revision):
        rows = await self.db.execute(
            "SELECT partition FROM segmentation_backfills WHERE segment_id = ? AND revision = ?", (segment_id, revision)
        )
        return {r.partition for r in rows}

    async def set_backfilled(self, segment_id, revision, partition):
        await self.db.execute(
            "INSERT INTO segmentation_backfills (segment_id, revision, partition) VALUES (?, ?, ?)",
            (segment_id, revision, partition),
        )

    async def add_timer(self, partition, bucket, profile_id):
        await self.db.execute(
            "INSERT INTO segmentation_timers (partition, bucket, profile_id) VALUES (?, ?, ?)",
            (partition, bucket, profile_id),
        )

    async def timers(self, partition, bucket):
        rows = await self.db.execute(
            "SELECT profile_id FROM segmentation_timers WHERE partition = ? AND bucket = ?", (partition, bucket)
        )
        return [r.profile_id for r in rows]

    async def drop_timer(self, partition, bucket, profile_id):
        await self.db.execute(
            "DELETE FROM segmentation_timers WHERE partition = ? AND bucket = ? AND profile_id = ?",
            (partition, bucket, profile_id),
        )

    async def timer_cursor(self, partition):
        rows = await self.db.execute("SELECT bucket FROM segmentation_timer_cursors WHERE partition = ?", (partition,))
        return rows[0].bucket if rows else None

    async def set_timer_cursor(self, partition, bucket):
        await self.db.execute(
            "INSERT INTO segmentation_timer_cursors (partition, bucket) VALUES (?, ?)", (partition, bucket)
        )

    async def set_size(self, segment_id, day, partition, members):
        await self.db.execute(
            "INSERT INTO segmentation_sizes (segment_id, day, partition, members) VALUES (?, ?, ?, ?)",
            (segment_id, day, partition, members),
        )

    async def sizes(self, segment_id, since):
        rows = await self.db.execute(
            "SELECT day, members FROM segmentation_sizes WHERE segment_id = ? AND day >= ? LIMIT 500000",
            (segment_id, since),
        )
        totals: dict[str, int] = {}
        for row in rows:
            totals[row.day] = totals.get(row.day, 0) + row.members
        return totals


class SqliteSegmentStore(Repository):
    db: SqliteStore

    async def create(self, segment):
        def work(db) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO segmentation_segments VALUES (?, ?)",
                (segment.segment_id, segment.SerializeToString()),
            )
            return cursor.rowcount == 1

        if not await self.db.transaction(work):
            raise AlreadyExists("segment", segment.segment_id)

    async def replace(self, segment):
        def work(db) -> bool:
            cursor = db.execute(
                "UPDATE segmentation_segments SET definition = ? WHERE segment_id = ?",
                (segment.SerializeToString(), segment.segment_id),
            )
            return cursor.rowcount == 1

        if not await self.db.transaction(work):
            raise NotFound("segment", segment.segment_id)

    async def delete(self, segment_id):
        await self.db.execute("DELETE FROM segmentation_segments WHERE segment_id = ?", (segment_id,))

    async def get(self, segment_id):
        rows = await self.db.execute("SELECT definition FROM segmentation_segments WHERE segment_id = ?", (segment_id,))
        return segment_pb2.Segment.FromString(rows[0][0]) if rows else None

    async def segments(self):
        rows = await self.db.execute("SELECT definition FROM segmentation_segments ORDER BY segment_id")
        return [segment_pb2.Segment.FromString(r[0]) for r in rows]

    async def page(self, after, size):
        rows = await self.db.execute(
            "SELECT definition FROM segmentation_segments WHERE segment_id > ? ORDER BY segment_id LIMIT ?",
            (after, size),
        )
        return [segment_pb2.Segment.FromString(r[0]) for r in rows]

    async def membership(self, segment_id, profile_id):
        rows = await self.db.execute(
            "SELECT member, profile_version FROM segmentation_memberships WHERE profile_id = ? AND segment_id = ?",
            (profile_id, segment_id),
        )
        return (bool(rows[0][0]), rows[0][1]) if rows else (False, 0)

    async def set_membership(self, segment_id, profile_id, member, version):
        await self.db.execute(
            "INSERT OR REPLACE INTO segmentation_memberships VALUES (?, ?, ?, ?)",
            (segment_id, profile_id, int(member), version),
        )

    async def profile_memberships(self, profile_id):
        rows = await self.db.execute(
            "SELECT segment_id, member, profile_version FROM segmentation_memberships WHERE profile_id = ?",
            (profile_id,),
        )
        return {r[0]: (bool(r[1]), r[2]) for r in rows}

    async def record(self, t):
        def work(db) -> None:
            db.execute(
                "INSERT OR REPLACE INTO segmentation_memberships VALUES (?, ?, ?, ?)",
                (t.segment_id, t.profile_id, int(t.entered), t.version),
            )
            db.execute(
                "INSERT OR REPLACE INTO segmentation_transitions VALUES (?, ?, ?, ?, ?)",
                (t.profile_id, t.segment_id, t.cause, int(t.entered), t.version),
            )
            db.execute(
                "INSERT OR REPLACE INTO segmentation_pending VALUES (?, ?, ?, ?, ?, ?)",
                (t.partition, t.profile_id, t.segment_id, t.cause, int(t.entered), t.version),
            )
            if t.entered:
                db.execute(
                    "INSERT OR REPLACE INTO segmentation_members VALUES (?, ?, ?, ?)",
                    (t.segment_id, t.partition, t.profile_id, t.version),
                )
            else:
                db.execute(
                    "DELETE FROM segmentation_members WHERE segment_id = ? AND partition = ? AND profile_id = ?",
                    (t.segment_id, t.partition, t.profile_id),
                )

        await self.db.transaction(work)

    async def pending(self, partition, profile_id=None):
        query = "SELECT profile_id, segment_id, cause, entered, profile_version FROM segmentation_pending WHERE partition = ?"
        args: tuple = (partition,)
        if profile_id is not None:
            query, args = query + " AND profile_id = ?", (partition, profile_id)
        rows = await self.db.execute(query, args)
        return [Transition(r[1], r[0], partition, bool(r[3]), r[4], r[2]) for r in rows]

    async def published(self, t):
        await self.db.execute(
            "DELETE FROM segmentation_pending WHERE partition = ? AND profile_id = ? AND segment_id = ? AND cause = ?",
            (t.partition, t.profile_id, t.segment_id, t.cause),
        )

    async def transitions(self, profile_id):
        rows = await self.db.execute(
            "SELECT segment_id, cause, entered, profile_version FROM segmentation_transitions WHERE profile_id = ?"
            " ORDER BY segment_id, cause",
            (profile_id,),
        )
        return [Transition(r[0], profile_id, -1, bool(r[2]), r[3], r[1]) for r in rows]

    async def members(self, segment_id, partition):
        rows = await self.db.execute(
            "SELECT profile_id, profile_version FROM segmentation_members WHERE segment_id = ? AND partition = ?"
            " ORDER BY profile_id",
            (segment_id, partition),
        )
        return [(r[0], r[1]) for r in rows]

    async def set_merged(self, partition, profile_id, survivor):
        if survivor:
            await self.db.execute(
                "INSERT OR REPLACE INTO segmentation_merged VALUES (?, ?, ?)", (partition, profile_id, survivor)
            )
        else:
            await self.db.execute(
                "DELETE FROM segmentation_merged WHERE partition = ? AND profile_id = ?", (partition, profile_id)
            )

    async def merged(self, partition):
        rows = await self.db.execute(
            "SELECT profile_id, survivor FROM segmentation_merged WHERE partition = ?", (partition,)
        )
        return {r[0]: r[1] for r in rows}

    async def backfilled(self, segment_id, revision):
        rows = await self.db.execute(
            "SELECT partition FROM segmentation_backfills WHERE segment_id = ? AND revision = ?", (segment_id, revision)
        )
        return {r[0] for r in rows}

    async def set_backfilled(self, segment_id, revision, partition):
        await self.db.execute(
            "INSERT OR IGNORE INTO segmentation_backfills VALUES (?, ?, ?)", (segment_id, revision, partition)
        )

    async def add_timer(self, partition, bucket, profile_id):
        await self.db.execute(
            "INSERT OR IGNORE INTO segmentation_timers VALUES (?, ?, ?)", (partition, bucket, profile_id)
        )

    async def timers(self, partition, bucket):
        rows = await self.db.execute(
            "SELECT profile_id FROM segmentation_timers WHERE partition = ? AND bucket = ? ORDER BY profile_id",
            (partition, bucket),
        )
        return [r[0] for r in rows]

    async def drop_timer(self, partition, bucket, profile_id):
        await self.db.execute(
            "DELETE FROM segmentation_timers WHERE partition = ? AND bucket = ? AND profile_id = ?",
            (partition, bucket, profile_id),
        )

    async def timer_cursor(self, partition):
        rows = await self.db.execute("SELECT bucket FROM segmentation_timer_cursors WHERE partition = ?", (partition,))
        return rows[0][0] if rows else None

    async def set_timer_cursor(self, partition, bucket):
        await self.db.execute("INSERT OR REPLACE INTO segmentation_timer_cursors VALUES (?, ?)", (partition, bucket))

    async def set_size(self, segment_id, day, partition, members):
        await self.db.execute(
            "INSERT OR REPLACE INTO segmentation_sizes VALUES (?, ?, ?, ?)", (segment_id, day, partition, members)
        )

    async def sizes(self, segment_id, since):
        rows = await self.db.execute(
            "SELECT day, sum(members) FROM segmentation_sizes WHERE segment_id = ? AND day >= ? GROUP BY day",
            (segment_id, since),
        )
        return {r[0]: r[1] for r in rows}


async def open_store(settings) -> SegmentStore:
    return await open_repository(
        settings, "segmentation", cassandra=(CASSANDRA, CassandraSegmentStore), sqlite=(SQLITE, SqliteSegmentStore)
    )
