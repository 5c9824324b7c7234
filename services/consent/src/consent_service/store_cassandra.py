"""The consent store on Cassandra.

The ledger is partitioned by profile (a person's decisions are few), heads by profile, members
by person; the outbox is spread over a few shards so no partition takes every write.
"""

from __future__ import annotations

import zlib
from datetime import datetime, timezone

from mosaic.platform.store import Migration, Repository
from mosaic.platform.store.cassandra import CassandraStore
from consent_service.store import MergeRecord, OutboxEntry, decision_from, decode_moves, encode_moves, micros

OUTBOX_SHARDS = 8

MIGRATIONS = [
    Migration(1, (
        "CREATE TABLE IF NOT EXISTS consent_ledger ("
        " profile_id text, purpose text, decided_at timestamp, granted boolean, source text,"
        " PRIMARY KEY ((profile_id), purpose, decided_at)) WITH CLUSTERING ORDER BY (purpose ASC, decided_at DESC)",
    )),
    Migration(2, (
        "ALTER TABLE consent_ledger ADD IF NOT EXISTS entry blob",
        "CREATE TABLE IF NOT EXISTS consent_heads (profile_id text PRIMARY KEY, head text)",
        "CREATE TABLE IF NOT EXISTS consent_members (head text, profile_id text, PRIMARY KEY ((head), profile_id))",
        "CREATE TABLE IF NOT EXISTS consent_merges (merge_id text PRIMARY KEY, survivor text, moves text, split boolean)",
        "CREATE TABLE IF NOT EXISTS consent_outbox ("
        " shard int, message_id text, topic text, key text, payload blob, PRIMARY KEY ((shard), message_id))",
    )),
]

_LEDGER = ("INSERT INTO consent_ledger (profile_id, purpose, decided_at, granted, source, entry)"
           " VALUES (?, ?, ?, ?, ?, ?)")
_OUTBOX = "INSERT INTO consent_outbox (shard, message_id, topic, key, payload) VALUES (?, ?, ?, ?, ?)"


def _shard(message_id: str) -> int:
    return zlib.crc32(message_id.encode()) % OUTBOX_SHARDS


def _outbox(outbox: list[OutboxEntry]) -> list[tuple[str, tuple]]:
    return [(_OUTBOX, (_shard(e.message_id), e.message_id, e.topic, e.key, e.payload)) for e in outbox]


def _micros_of(when: datetime) -> int:
    return int(when.replace(tzinfo=timezone.utc).timestamp() * 1000) * 1000


class CassandraConsentStore(Repository):
    db: CassandraStore

    async def append(self, decisions, outbox):
        statements = [
            (_LEDGER, (d.profile_id, d.purpose, datetime.fromtimestamp(micros(d.decided_at) / 1e6, tz=timezone.utc),
                       d.granted, d.source, d.SerializeToString()))
            for d in decisions
        ]
        await self.db.execute_atomic(statements + _outbox(outbox))

    async def ledger(self, profile_ids, limit=10_000):
        decisions = []
        for profile_id in dict.fromkeys(profile_ids):
            rows = await self.db.execute(
                "SELECT profile_id, purpose, decided_at, granted, source, entry FROM consent_ledger"
                " WHERE profile_id = ? LIMIT ?", (profile_id, limit))
            decisions += [decision_from(r.profile_id, r.purpose, _micros_of(r.decided_at), r.granted, r.source, r.entry)
                          for r in rows]
        decisions.sort(key=lambda d: (micros(d.decided_at), d.purpose, d.profile_id))
        return decisions[:limit]

    async def head(self, profile_id):
        rows = await self.db.execute("SELECT head FROM consent_heads WHERE profile_id = ?", (profile_id,))
        return rows[0].head if rows and rows[0].head else profile_id

    async def members(self, head):
        rows = await self.db.execute("SELECT profile_id FROM consent_members WHERE head = ?", (head,))
        return [head, *(r.profile_id for r in rows if r.profile_id != head)]

    async def merge_record(self, merge_id):
        rows = await self.db.execute("SELECT survivor, moves, split FROM consent_merges WHERE merge_id = ?", (merge_id,))
        if not rows:
            return None
        return MergeRecord(merge_id, rows[0].survivor, decode_moves(rows[0].moves or ""), bool(rows[0].split))

    @staticmethod
    def _point(profile_id: str, old_head: str, new_head: str) -> list[tuple[str, tuple]]:
        statements: list[tuple[str, tuple]] = []
        if old_head != profile_id:
            statements.append(("DELETE FROM consent_members WHERE head = ? AND profile_id = ?", (old_head, profile_id)))
        if new_head == profile_id:
            statements.append(("DELETE FROM consent_heads WHERE profile_id = ?", (profile_id,)))
        else:
            statements.append(("INSERT INTO consent_heads (profile_id, head) VALUES (?, ?)", (profile_id, new_head)))
            statements.append(("INSERT INTO consent_members (head, profile_id) VALUES (?, ?)", (new_head, profile_id)))
        return statements

    async def apply_merge(self, record, outbox):
        statements = []
        for move in record.moves:
            statements += self._point(move.profile_id, move.previous_head, record.survivor)
        statements.append(("INSERT INTO consent_merges (merge_id, survivor, moves, split) VALUES (?, ?, ?, false)",
                           (record.merge_id, record.survivor, encode_moves(record.moves))))
        await self.db.execute_atomic(statements + _outbox(outbox))

    async def apply_split(self, record, outbox):
        statements = []
        for move in record.moves:
            statements += self._point(move.profile_id, record.survivor, move.previous_head)
        statements.append(("INSERT INTO consent_merges (merge_id, survivor, moves, split) VALUES (?, ?, ?, true)",
                           (record.merge_id, record.survivor, encode_moves(record.moves))))
        await self.db.execute_atomic(statements + _outbox(outbox))

    async def outbox_pending(self, limit=500):
        entries = []
        for shard in range(OUTBOX_SHARDS):
            rows = await self.db.execute(
                "SELECT message_id, topic, key, payload FROM consent_outbox WHERE shard = ? LIMIT ?", (shard, limit))
            entries += [OutboxEntry(r.message_id, r.topic, r.key, r.payload) for r in rows]
        return entries[:limit]

    async def outbox_done(self, message_ids):
        await self.db.execute_together(
            [("DELETE FROM consent_outbox WHERE shard = ? AND message_id = ?", (_shard(m), m)) for m in message_ids])
