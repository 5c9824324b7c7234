"""The segmentation store on Cassandra (see base.py for what is kept and why)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from mosaic.platform import topics
from mosaic.platform.errors import AlreadyExists, NotFound
from mosaic.platform.store import Migration, Repository
from mosaic.platform.store.cassandra import CassandraStore
from mosaic.segmentation.v1 import segment_pb2
from segmentation_service.store.base import SegmentStore
from segmentation_service.store.model import Decided, Timer, Transition

# Profiles a multi-partition IN read names. 64 measured the same as 16 in the pipeline bench
# (a partition's fetched batch is ~12 profiles there).
PROFILES_PER_READ = 16
DELETES_PER_REQUEST = 32  # within the node's batch size warning
TRANSITIONS_PER_REQUEST = 8  # ~32 small rows: within it too

MIGRATIONS = [
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
    # Timers set before it are not indexed (CQL has no INSERT ... SELECT); they fire as before.
    Migration(
        5,
        (
            "CREATE TABLE IF NOT EXISTS segmentation_timer_index (profile_id text, bucket bigint, partition int,"
            " PRIMARY KEY ((profile_id), bucket))",
        ),
    ),
    Migration(6, ("CREATE TABLE IF NOT EXISTS segmentation_rfm (name text PRIMARY KEY, model blob)",)),
    Migration(
        7,
        (
            "CREATE TABLE IF NOT EXISTS segmentation_erased (partition int, erased_key text, erased_at double,"
            " PRIMARY KEY ((partition), erased_key))",
        ),
    ),
]


class CassandraSegmentStore(Repository, SegmentStore):
    db: CassandraStore

    async def create(self, segment: segment_pb2.Segment) -> None:
        applied, _ = await self.db.execute_lwt(
            "INSERT INTO segmentation_segments (segment_id, definition) VALUES (?, ?) IF NOT EXISTS",
            (segment.segment_id, segment.SerializeToString()),
        )
        if not applied:
            raise AlreadyExists("segment", segment.segment_id)

    async def replace(self, segment: segment_pb2.Segment) -> None:
        applied, _ = await self.db.execute_lwt(
            "UPDATE segmentation_segments SET definition = ? WHERE segment_id = ? IF EXISTS",
            (segment.SerializeToString(), segment.segment_id),
        )
        if not applied:
            raise NotFound("segment", segment.segment_id)

    async def delete(self, segment_id: str) -> None:
        await self.db.execute("DELETE FROM segmentation_segments WHERE segment_id = ?", (segment_id,))

    async def get(self, segment_id: str) -> segment_pb2.Segment | None:
        rows = await self.db.execute("SELECT definition FROM segmentation_segments WHERE segment_id = ?", (segment_id,))
        return segment_pb2.Segment.FromString(rows[0].definition) if rows else None

    async def segments(self) -> list[segment_pb2.Segment]:
        rows = await self.db.execute("SELECT definition FROM segmentation_segments LIMIT 100000")
        return sorted((segment_pb2.Segment.FromString(r.definition) for r in rows), key=lambda s: s.segment_id)

    async def page(self, after: str, size: int) -> list[segment_pb2.Segment]:
        # Ids are few (thousands); the partition order is by token, so sort after reading.
        return [s for s in await self.segments() if s.segment_id > after][:size]

    async def membership(self, segment_id: str, profile_id: str) -> tuple[bool, int]:
        rows = await self.db.execute(
            "SELECT member, profile_version FROM segmentation_memberships WHERE profile_id = ? AND segment_id = ?",
            (profile_id, segment_id),
        )
        return (rows[0].member, rows[0].profile_version) if rows else (False, 0)

    async def set_membership(self, segment_id: str, profile_id: str, member: bool, version: int) -> None:
        await self.db.execute(
            "INSERT INTO segmentation_memberships (segment_id, profile_id, member, profile_version) VALUES (?, ?, ?, ?)",
            (segment_id, profile_id, member, version),
        )

    async def profile_memberships(self, profile_id: str) -> dict[str, tuple[bool, int]]:
        rows = await self.db.execute(
            "SELECT segment_id, member, profile_version FROM segmentation_memberships WHERE profile_id = ?",
            (profile_id,),
        )
        return {r.segment_id: (r.member, r.profile_version) for r in rows}

    async def decisions(self, profiles: Mapping[str, int]) -> tuple[dict[str, Decided], list[Transition]]:
        # Multi-partition IN reads, all at once: a request costs this Python client far more than
        # a row. A profile has a membership row per segment that ever held it, so a read may
        # pass a page (5,000 rows): execute reads every page.
        ids = list(profiles)
        by_partition: dict[int, list[str]] = {}
        for profile_id, partition in profiles.items():
            by_partition.setdefault(partition, []).append(profile_id)
        reads = [
            self.db.execute(
                "SELECT profile_id, segment_id, member, profile_version FROM segmentation_memberships"
                " WHERE profile_id IN ?",
                (ids[i : i + PROFILES_PER_READ],),
            )
            for i in range(0, len(ids), PROFILES_PER_READ)
        ]
        pending = [
            (partition, chunk[i : i + PROFILES_PER_READ])
            for partition, chunk in by_partition.items()
            for i in range(0, len(chunk), PROFILES_PER_READ)
        ]
        found = await asyncio.gather(
            *reads,
            *(
                self.db.execute(
                    "SELECT profile_id, segment_id, cause, entered, profile_version FROM segmentation_pending"
                    " WHERE partition = ? AND profile_id IN ?",
                    (partition, chunk),
                )
                for partition, chunk in pending
            ),
        )
        decided: dict[str, Decided] = {}
        for row in (row for rows in found[: len(reads)] for row in rows):
            decided.setdefault(row.profile_id, {})[row.segment_id] = (row.member, row.profile_version)
        waiting = [
            Transition(r.segment_id, r.profile_id, partition, r.entered, r.profile_version, r.cause)
            for (partition, _), rows in zip(pending, found[len(reads) :], strict=True)
            for r in rows
        ]
        return decided, waiting

    async def record(self, transitions: Sequence[Transition], timers: Sequence[Timer] = ()) -> None:
        # A transition's rows are in four tables: logged batches (all of a batch or none), a few
        # transitions each, side by side. Two of one profile and segment (a batch may enter a
        # segment and leave it) never share a request, whose rows would share a write time:
        # the k-th of each goes in the k-th round, and the rounds go one after the other.
        rounds: list[list[Transition]] = []
        count: dict[tuple[str, str], int] = {}
        for t in transitions:
            k = count[t.profile_id, t.segment_id] = count.get((t.profile_id, t.segment_id), -1) + 1
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(t)
        for round_ in rounds:
            await asyncio.gather(
                *(
                    self.db.execute_atomic(
                        [s for t in round_[i : i + TRANSITIONS_PER_REQUEST] for s in self._transition(t)]
                    )
                    for i in range(0, len(round_), TRANSITIONS_PER_REQUEST)
                )
            )
        # The index first: a crash between the two leaves an index row without a timer, never
        # a timer that an erasure cannot find.
        index: dict[str, list[tuple[str, tuple]]] = {}
        rows: dict[tuple[int, int], list[tuple[str, tuple]]] = {}
        for partition, bucket, profile_id in timers:
            index.setdefault(profile_id, []).append(
                (
                    "INSERT INTO segmentation_timer_index (profile_id, bucket, partition) VALUES (?, ?, ?)",
                    (profile_id, bucket, partition),
                )
            )
            rows.setdefault((partition, bucket), []).append(
                (
                    "INSERT INTO segmentation_timers (partition, bucket, profile_id) VALUES (?, ?, ?)",
                    (partition, bucket, profile_id),
                )
            )
        await self.db.execute_partitioned(index, atomic=False)
        await self.db.execute_partitioned(rows, atomic=False)

    @staticmethod
    def _transition(t: Transition) -> list[tuple[str, tuple]]:
        statements: list[tuple[str, tuple]] = [
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
        return statements

    async def pending(self, partition: int, profile_id: str | None = None) -> list[Transition]:
        query = (
            "SELECT profile_id, segment_id, cause, entered, profile_version FROM segmentation_pending"
            " WHERE partition = ?"
        )
        args: tuple = (partition,)
        if profile_id is not None:
            query, args = query + " AND profile_id = ?", (partition, profile_id)
        rows = await self.db.execute(query, args)
        return [Transition(r.segment_id, r.profile_id, partition, r.entered, r.profile_version, r.cause) for r in rows]

    async def published(self, transitions: Sequence[Transition]) -> None:
        # A request per partition (a batch's pending rows share the consumer's) and DELETES_PER_REQUEST.
        by_partition: dict[int, list[tuple[str, tuple]]] = {}
        for t in transitions:
            by_partition.setdefault(t.partition, []).append(
                (
                    "DELETE FROM segmentation_pending WHERE partition = ? AND profile_id = ? AND segment_id = ?"
                    " AND cause = ?",
                    (t.partition, t.profile_id, t.segment_id, t.cause),
                )
            )
        await asyncio.gather(
            *(
                self.db.execute_atomic(statements[i : i + DELETES_PER_REQUEST], single_partition=True)
                for statements in by_partition.values()
                for i in range(0, len(statements), DELETES_PER_REQUEST)
            )
        )

    async def transitions(self, profile_id: str) -> list[Transition]:
        rows = await self.db.execute(
            "SELECT segment_id, cause, entered, profile_version FROM segmentation_transitions WHERE profile_id = ?",
            (profile_id,),
        )
        return [Transition(r.segment_id, profile_id, -1, r.entered, r.profile_version, r.cause) for r in rows]

    async def members(self, segment_id: str, partition: int) -> list[tuple[str, int]]:
        rows = await self.db.execute(
            "SELECT profile_id, profile_version FROM segmentation_members WHERE segment_id = ? AND partition = ?",
            (segment_id, partition),
        )
        return [(r.profile_id, r.profile_version) for r in rows]

    async def set_merged(self, partition: int, profile_id: str, survivor: str) -> None:
        if survivor:
            await self.db.execute(
                "INSERT INTO segmentation_merged (partition, profile_id, survivor) VALUES (?, ?, ?)",
                (partition, profile_id, survivor),
            )
        else:
            await self.db.execute(
                "DELETE FROM segmentation_merged WHERE partition = ? AND profile_id = ?", (partition, profile_id)
            )

    async def merged(self, partition: int) -> dict[str, str]:
        rows = await self.db.execute(
            "SELECT profile_id, survivor FROM segmentation_merged WHERE partition = ?", (partition,)
        )
        return {r.profile_id: r.survivor for r in rows}

    async def backfilled(self, segment_id: str, revision: int) -> set[int]:
        rows = await self.db.execute(
            "SELECT partition FROM segmentation_backfills WHERE segment_id = ? AND revision = ?", (segment_id, revision)
        )
        return {r.partition for r in rows}

    async def set_backfilled(self, segment_id: str, revision: int, partition: int) -> None:
        await self.db.execute(
            "INSERT INTO segmentation_backfills (segment_id, revision, partition) VALUES (?, ?, ?)",
            (segment_id, revision, partition),
        )

    async def add_timer(self, partition: int, bucket: int, profile_id: str) -> None:
        await self.record([], [(partition, bucket, profile_id)])

    async def timers(self, partition: int, bucket: int) -> list[str]:
        rows = await self.db.execute(
            "SELECT profile_id FROM segmentation_timers WHERE partition = ? AND bucket = ?", (partition, bucket)
        )
        return [r.profile_id for r in rows]

    async def drop_timer(self, partition: int, bucket: int, profile_id: str) -> None:
        await self.db.execute(
            "DELETE FROM segmentation_timers WHERE partition = ? AND bucket = ? AND profile_id = ?",
            (partition, bucket, profile_id),
        )
        await self.db.execute(
            "DELETE FROM segmentation_timer_index WHERE profile_id = ? AND bucket = ?", (profile_id, bucket)
        )

    async def timer_cursor(self, partition: int) -> int | None:
        rows = await self.db.execute("SELECT bucket FROM segmentation_timer_cursors WHERE partition = ?", (partition,))
        return rows[0].bucket if rows else None

    async def set_timer_cursor(self, partition: int, bucket: int) -> None:
        await self.db.execute(
            "INSERT INTO segmentation_timer_cursors (partition, bucket) VALUES (?, ?)", (partition, bucket)
        )

    async def set_size(self, segment_id: str, day: str, partition: int, members: int) -> None:
        await self.db.execute(
            "INSERT INTO segmentation_sizes (segment_id, day, partition, members) VALUES (?, ?, ?, ?)",
            (segment_id, day, partition, members),
        )

    async def sizes(self, segment_id: str, since: str) -> dict[str, int]:
        rows = await self.db.execute(
            "SELECT day, members FROM segmentation_sizes WHERE segment_id = ? AND day >= ? LIMIT 500000",
            (segment_id, since),
        )
        totals: dict[str, int] = {}
        for row in rows:
            totals[row.day] = totals.get(row.day, 0) + row.members
        return totals

    async def rfm_model(self) -> segment_pb2.RfmModel | None:
        rows = await self.db.execute("SELECT model FROM segmentation_rfm WHERE name = ?", ("rfm",))
        return segment_pb2.RfmModel.FromString(rows[0].model) if rows else None

    async def set_rfm_model(self, model: segment_pb2.RfmModel) -> None:
        await self.db.execute(
            "INSERT INTO segmentation_rfm (name, model) VALUES (?, ?)", ("rfm", model.SerializeToString())
        )

    async def init_rfm_model(self, model: segment_pb2.RfmModel) -> None:
        await self.db.execute_lwt(
            "INSERT INTO segmentation_rfm (name, model) VALUES (?, ?) IF NOT EXISTS", ("rfm", model.SerializeToString())
        )

    async def add_erased(self, partition: int, keys: Sequence[str], at: float) -> None:
        # Kept as long as the profile.updated stream keeps a message: then the row expires.
        ttl = int(topics.PROFILE_UPDATED.max_age)
        await asyncio.gather(
            *(
                self.db.execute(
                    "INSERT INTO segmentation_erased (partition, erased_key, erased_at) VALUES (?, ?, ?) USING TTL ?",
                    (partition, key, at, ttl),
                )
                for key in keys
            )
        )

    async def erased(self, partition: int, since: float) -> list[str]:
        rows = await self.db.execute(
            "SELECT erased_key, erased_at FROM segmentation_erased WHERE partition = ? LIMIT 1000000", (partition,)
        )
        return [r.erased_key for r in rows if r.erased_at >= since]
