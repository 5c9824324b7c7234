"""Segment definitions and memberships.

A membership row keeps the profile version it was decided at; an update for an older version
is stale (a redelivery) and changes nothing.
"""

from __future__ import annotations

from typing import Protocol

from mosaic.platform.errors import AlreadyExists
from mosaic.platform.store import Migration, Repository, open_repository
from mosaic.platform.store.cassandra import CassandraStore
from mosaic.platform.store.sqlite import SqliteStore
from mosaic.segmentation.v1 import segment_pb2

CASSANDRA = [
    Migration(1, (
        "CREATE TABLE IF NOT EXISTS segmentation_segments (segment_id text PRIMARY KEY, definition blob)",
        "CREATE TABLE IF NOT EXISTS segmentation_memberships ("
        " segment_id text, profile_id text, member boolean, profile_version bigint,"
        " PRIMARY KEY ((profile_id), segment_id))",
    )),
]
SQLITE = [
    Migration(1, (
        "CREATE TABLE segmentation_segments (segment_id TEXT PRIMARY KEY, definition BLOB)",
        "CREATE TABLE segmentation_memberships (segment_id TEXT, profile_id TEXT, member INTEGER,"
        " profile_version INTEGER, PRIMARY KEY (profile_id, segment_id))",
    )),
]


class SegmentStore(Protocol):
    async def create(self, segment: segment_pb2.Segment) -> None:
        """Store a new segment; AlreadyExists when the id is taken."""
    async def segments(self) -> list[segment_pb2.Segment]: ...
    async def membership(self, segment_id: str, profile_id: str) -> tuple[bool, int]:
        """(member, profile version decided at); (False, 0) when never decided."""
    async def set_membership(self, segment_id: str, profile_id: str, member: bool, version: int) -> None: ...
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

    async def segments(self):
        rows = await self.db.execute("SELECT definition FROM segmentation_segments LIMIT 10000")
        return sorted((segment_pb2.Segment.FromString(r.definition) for r in rows), key=lambda s: s.segment_id)

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



class SqliteSegmentStore(Repository):
    db: SqliteStore

    async def create(self, segment):
        def work(db) -> bool:
            cursor = db.execute("INSERT OR IGNORE INTO segmentation_segments VALUES (?, ?)",
                                (segment.segment_id, segment.SerializeToString()))
            return cursor.rowcount == 1

        if not await self.db.transaction(work):
            raise AlreadyExists("segment", segment.segment_id)

    async def segments(self):
        rows = await self.db.execute("SELECT definition FROM segmentation_segments ORDER BY segment_id")
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



async def open_store(settings) -> SegmentStore:
    return await open_repository(
        settings, "segmentation", cassandra=(CASSANDRA, CassandraSegmentStore), sqlite=(SQLITE, SqliteSegmentStore)
    )
