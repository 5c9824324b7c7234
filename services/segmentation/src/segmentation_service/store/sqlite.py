"""The segmentation store on SQLite (see base.py for what is kept and why)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from mosaic.platform.errors import AlreadyExists, NotFound
from mosaic.platform.store import Migration, Repository
from mosaic.platform.store.sqlite import SqliteStore
from mosaic.segmentation.v1 import segment_pb2
from segmentation_service.store.base import SegmentStore
from segmentation_service.store.model import Decided, Timer, Transition

CHUNK = 500  # profiles read by one statement (each bound twice; SQLite allows 32,766 variables)
DELETES = 200  # pending rows dropped by one statement (an OR of as many terms; its depth limit is 1,000)

MIGRATIONS = [
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
    Migration(
        5,
        (
            "CREATE TABLE segmentation_timer_index (profile_id TEXT, bucket INTEGER, partition INTEGER,"
            " PRIMARY KEY (profile_id, bucket))",
            "INSERT OR IGNORE INTO segmentation_timer_index SELECT profile_id, bucket, partition FROM segmentation_timers",
        ),
    ),
    Migration(6, ("CREATE TABLE segmentation_rfm (name TEXT PRIMARY KEY, model BLOB)",)),
    Migration(
        7,
        (
            "CREATE TABLE segmentation_erased (partition INTEGER, erased_key TEXT, erased_at REAL,"
            " PRIMARY KEY (partition, erased_key))",
        ),
    ),
]


class SqliteSegmentStore(Repository, SegmentStore):
    db: SqliteStore

    async def create(self, segment: segment_pb2.Segment) -> None:
        def work(db) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO segmentation_segments VALUES (?, ?)",
                (segment.segment_id, segment.SerializeToString()),
            )
            return cursor.rowcount == 1

        if not await self.db.transaction(work):
            raise AlreadyExists("segment", segment.segment_id)

    async def replace(self, segment: segment_pb2.Segment) -> None:
        def work(db) -> bool:
            cursor = db.execute(
                "UPDATE segmentation_segments SET definition = ? WHERE segment_id = ?",
                (segment.SerializeToString(), segment.segment_id),
            )
            return cursor.rowcount == 1

        if not await self.db.transaction(work):
            raise NotFound("segment", segment.segment_id)

    async def delete(self, segment_id: str) -> None:
        await self.db.execute("DELETE FROM segmentation_segments WHERE segment_id = ?", (segment_id,))

    async def get(self, segment_id: str) -> segment_pb2.Segment | None:
        rows = await self.db.execute("SELECT definition FROM segmentation_segments WHERE segment_id = ?", (segment_id,))
        return segment_pb2.Segment.FromString(rows[0][0]) if rows else None

    async def segments(self) -> list[segment_pb2.Segment]:
        rows = await self.db.execute("SELECT definition FROM segmentation_segments ORDER BY segment_id")
        return [segment_pb2.Segment.FromString(r[0]) for r in rows]

    async def page(self, after: str, size: int) -> list[segment_pb2.Segment]:
        rows = await self.db.execute(
            "SELECT definition FROM segmentation_segments WHERE segment_id > ? ORDER BY segment_id LIMIT ?",
            (after, size),
        )
        return [segment_pb2.Segment.FromString(r[0]) for r in rows]

    async def membership(self, segment_id: str, profile_id: str) -> tuple[bool, int]:
        rows = await self.db.execute(
            "SELECT member, profile_version FROM segmentation_memberships WHERE profile_id = ? AND segment_id = ?",
            (profile_id, segment_id),
        )
        return (bool(rows[0][0]), rows[0][1]) if rows else (False, 0)

    async def set_membership(self, segment_id: str, profile_id: str, member: bool, version: int) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO segmentation_memberships VALUES (?, ?, ?, ?)",
            (segment_id, profile_id, int(member), version),
        )

    async def profile_memberships(self, profile_id: str) -> dict[str, tuple[bool, int]]:
        rows = await self.db.execute(
            "SELECT segment_id, member, profile_version FROM segmentation_memberships WHERE profile_id = ?",
            (profile_id,),
        )
        return {r[0]: (bool(r[1]), r[2]) for r in rows}

    async def decisions(self, profiles: Mapping[str, int]) -> tuple[dict[str, Decided], list[Transition]]:
        # One statement (a call to the store's thread, a snapshot) per CHUNK profiles: their
        # memberships (kind 0), then their pending transitions (kind 1) partition by partition.
        ids = list(profiles)
        decided: dict[str, Decided] = {}
        pending: list[Transition] = []
        for chunk in (ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)):
            by_partition: dict[int, list[str]] = {}
            for profile_id in chunk:
                by_partition.setdefault(profiles[profile_id], []).append(profile_id)
            query = [
                "SELECT 0, profile_id, segment_id, member, profile_version, NULL FROM segmentation_memberships"
                f" WHERE profile_id IN ({_marks(chunk)})"
            ]
            args: list = list(chunk)
            for partition, members in by_partition.items():
                query.append(
                    "SELECT 1, profile_id, segment_id, entered, profile_version, cause FROM segmentation_pending"
                    f" WHERE partition = ? AND profile_id IN ({_marks(members)})"
                )
                args.extend((partition, *members))
            for kind, profile_id, segment_id, flag, version, cause in await self.db.execute(
                " UNION ALL ".join(query), args
            ):
                if kind == 0:
                    decided.setdefault(profile_id, {})[segment_id] = (bool(flag), version)
                else:
                    pending.append(Transition(segment_id, profile_id, profiles[profile_id], bool(flag), version, cause))
        return decided, pending

    async def record(self, transitions: Sequence[Transition], timers: Sequence[Timer] = ()) -> None:
        # A statement per table for the whole batch: each call into sqlite3 gives up the GIL
        # and waits to take it back from the event loop.
        def work(db) -> None:
            if transitions:
                db.executemany(
                    "INSERT OR REPLACE INTO segmentation_memberships VALUES (?, ?, ?, ?)",
                    [(t.segment_id, t.profile_id, int(t.entered), t.version) for t in transitions],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO segmentation_transitions VALUES (?, ?, ?, ?, ?)",
                    [(t.profile_id, t.segment_id, t.cause, int(t.entered), t.version) for t in transitions],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO segmentation_pending VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (t.partition, t.profile_id, t.segment_id, t.cause, int(t.entered), t.version)
                        for t in transitions
                    ],
                )
            # In order: a batch may enter a segment and leave it again.
            for entered, run in itertools.groupby(transitions, key=lambda t: t.entered):
                if entered:
                    db.executemany(
                        "INSERT OR REPLACE INTO segmentation_members VALUES (?, ?, ?, ?)",
                        [(t.segment_id, t.partition, t.profile_id, t.version) for t in run],
                    )
                else:
                    db.executemany(
                        "DELETE FROM segmentation_members WHERE segment_id = ? AND partition = ? AND profile_id = ?",
                        [(t.segment_id, t.partition, t.profile_id) for t in run],
                    )
            if timers:
                _add_timers(db, timers)

        if transitions or timers:
            await self.db.transaction(work)

    async def pending(self, partition: int, profile_id: str | None = None) -> list[Transition]:
        query = "SELECT profile_id, segment_id, cause, entered, profile_version FROM segmentation_pending WHERE partition = ?"
        args: tuple = (partition,)
        if profile_id is not None:
            query, args = query + " AND profile_id = ?", (partition, profile_id)
        rows = await self.db.execute(query, args)
        return [Transition(r[1], r[0], partition, bool(r[3]), r[4], r[2]) for r in rows]

    async def published(self, transitions: Sequence[Transition]) -> None:
        # One statement per DELETES rows, each row a term of an OR (SQLite finds each by the key;
        # a row-value IN would scan the table).
        for first in range(0, len(transitions), DELETES):
            chunk = transitions[first : first + DELETES]
            await self.db.execute(
                "DELETE FROM segmentation_pending WHERE "
                + " OR ".join(["(partition = ? AND profile_id = ? AND segment_id = ? AND cause = ?)"] * len(chunk)),
                [v for t in chunk for v in (t.partition, t.profile_id, t.segment_id, t.cause)],
            )

    async def transitions(self, profile_id: str) -> list[Transition]:
        rows = await self.db.execute(
            "SELECT segment_id, cause, entered, profile_version FROM segmentation_transitions WHERE profile_id = ?"
            " ORDER BY segment_id, cause",
            (profile_id,),
        )
        return [Transition(r[0], profile_id, -1, bool(r[2]), r[3], r[1]) for r in rows]

    async def members(self, segment_id: str, partition: int) -> list[tuple[str, int]]:
        rows = await self.db.execute(
            "SELECT profile_id, profile_version FROM segmentation_members WHERE segment_id = ? AND partition = ?"
            " ORDER BY profile_id",
            (segment_id, partition),
        )
        return [(r[0], r[1]) for r in rows]

    async def set_merged(self, partition: int, profile_id: str, survivor: str) -> None:
        if survivor:
            await self.db.execute(
                "INSERT OR REPLACE INTO segmentation_merged VALUES (?, ?, ?)", (partition, profile_id, survivor)
            )
        else:
            await self.db.execute(
                "DELETE FROM segmentation_merged WHERE partition = ? AND profile_id = ?", (partition, profile_id)
            )

    async def merged(self, partition: int) -> dict[str, str]:
        rows = await self.db.execute(
            "SELECT profile_id, survivor FROM segmentation_merged WHERE partition = ?", (partition,)
        )
        return {r[0]: r[1] for r in rows}

    async def backfilled(self, segment_id: str, revision: int) -> set[int]:
        rows = await self.db.execute(
            "SELECT partition FROM segmentation_backfills WHERE segment_id = ? AND revision = ?", (segment_id, revision)
        )
        return {r[0] for r in rows}

    async def set_backfilled(self, segment_id: str, revision: int, partition: int) -> None:
        await self.db.execute(
            "INSERT OR IGNORE INTO segmentation_backfills VALUES (?, ?, ?)", (segment_id, revision, partition)
        )

    async def add_timer(self, partition: int, bucket: int, profile_id: str) -> None:
        await self.db.transaction(lambda db: _add_timers(db, [(partition, bucket, profile_id)]))

    async def timers(self, partition: int, bucket: int) -> list[str]:
        rows = await self.db.execute(
            "SELECT profile_id FROM segmentation_timers WHERE partition = ? AND bucket = ? ORDER BY profile_id",
            (partition, bucket),
        )
        return [r[0] for r in rows]

    async def drop_timer(self, partition: int, bucket: int, profile_id: str) -> None:
        def work(db) -> None:
            db.execute(
                "DELETE FROM segmentation_timers WHERE partition = ? AND bucket = ? AND profile_id = ?",
                (partition, bucket, profile_id),
            )
            db.execute("DELETE FROM segmentation_timer_index WHERE profile_id = ? AND bucket = ?", (profile_id, bucket))

        await self.db.transaction(work)

    async def timer_cursor(self, partition: int) -> int | None:
        rows = await self.db.execute("SELECT bucket FROM segmentation_timer_cursors WHERE partition = ?", (partition,))
        return rows[0][0] if rows else None

    async def set_timer_cursor(self, partition: int, bucket: int) -> None:
        await self.db.execute("INSERT OR REPLACE INTO segmentation_timer_cursors VALUES (?, ?)", (partition, bucket))

    async def set_size(self, segment_id: str, day: str, partition: int, members: int) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO segmentation_sizes VALUES (?, ?, ?, ?)", (segment_id, day, partition, members)
        )

    async def sizes(self, segment_id: str, since: str) -> dict[str, int]:
        rows = await self.db.execute(
            "SELECT day, sum(members) FROM segmentation_sizes WHERE segment_id = ? AND day >= ? GROUP BY day",
            (segment_id, since),
        )
        return {r[0]: r[1] for r in rows}

    async def rfm_model(self) -> segment_pb2.RfmModel | None:
        rows = await self.db.execute("SELECT model FROM segmentation_rfm WHERE name = 'rfm'")
        return segment_pb2.RfmModel.FromString(rows[0][0]) if rows else None

    async def set_rfm_model(self, model: segment_pb2.RfmModel) -> None:
        await self.db.execute("INSERT OR REPLACE INTO segmentation_rfm VALUES ('rfm', ?)", (model.SerializeToString(),))

    async def add_erased(self, partition: int, keys: Sequence[str], at: float) -> None:
        await self.db.transaction(
            lambda db: db.executemany(
                "INSERT OR REPLACE INTO segmentation_erased VALUES (?, ?, ?)", [(partition, k, at) for k in keys]
            )
        )

    async def erased(self, partition: int, since: float) -> list[str]:
        def work(db) -> list[str]:
            db.execute("DELETE FROM segmentation_erased WHERE partition = ? AND erased_at < ?", (partition, since))
            rows = db.execute("SELECT erased_key FROM segmentation_erased WHERE partition = ?", (partition,))
            return [r[0] for r in rows]

        return await self.db.transaction(work)

    async def init_rfm_model(self, model: segment_pb2.RfmModel) -> None:
        await self.db.execute("INSERT OR IGNORE INTO segmentation_rfm VALUES ('rfm', ?)", (model.SerializeToString(),))


def _add_timers(db, timers: Sequence[Timer]) -> None:
    db.executemany("INSERT OR IGNORE INTO segmentation_timers VALUES (?, ?, ?)", timers)
    db.executemany(
        "INSERT OR IGNORE INTO segmentation_timer_index VALUES (?, ?, ?)",
        [(profile_id, bucket, partition) for partition, bucket, profile_id in timers],
    )


def _marks(values: Sequence) -> str:
    return ",".join("?" * len(values))
