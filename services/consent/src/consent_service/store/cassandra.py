"""The consent store on Cassandra.

The ledger is partitioned by profile (a person's decisions are few), heads by profile, members
by person; the outbox is spread over a few shards so no partition takes every write.

The outbox keeps each person's messages in order: a message goes to the shard of its key (the
person), clustered by a time uuid taken when it is written (uuid1: increasing within a
process), so the relay, reading a shard from its oldest entry, publishes a person's notices in
the order they were written. Why not shards by message id, merged by time at the relay: a read
of one page per shard could not tell whether an older entry of a person waits beyond another
shard's page, so the relay would have to read every shard whole. The cost: a busy person's
notices all load one shard, which only matters at thousands of notices a second for one person.
(A consumer replaces its copy with each notice, so out of order, an older state would win.)
"""

from __future__ import annotations

import uuid
import zlib
from datetime import datetime, timezone

from consent_service.store.base import ConsentStore
from consent_service.store.model import (
    Expiry,
    MergeRecord,
    OutboxEntry,
    decision_from,
    decode_moves,
    encode_moves,
    erasure_key,
    expiries_of,
    micros,
)
from mosaic.consent.v1 import consent_pb2, privacy_pb2
from mosaic.platform.store import Migration, Repository
from mosaic.platform.store.cassandra import CassandraStore

OUTBOX_SHARDS = 8

MIGRATIONS = [
    Migration(
        1,
        (
            "CREATE TABLE IF NOT EXISTS consent_ledger ("
            " profile_id text, purpose text, decided_at timestamp, granted boolean, source text,"
            " PRIMARY KEY ((profile_id), purpose, decided_at)) WITH CLUSTERING ORDER BY (purpose ASC, decided_at DESC)",
        ),
    ),
    Migration(
        2,
        (
            "ALTER TABLE consent_ledger ADD IF NOT EXISTS entry blob",
            "CREATE TABLE IF NOT EXISTS consent_heads (profile_id text PRIMARY KEY, head text)",
            "CREATE TABLE IF NOT EXISTS consent_members (head text, profile_id text, PRIMARY KEY ((head), profile_id))",
            "CREATE TABLE IF NOT EXISTS consent_merges (merge_id text PRIMARY KEY, survivor text, moves text, split boolean)",
            "CREATE TABLE IF NOT EXISTS consent_outbox ("
            " shard int, message_id text, topic text, key text, payload blob, PRIMARY KEY ((shard), message_id))",
        ),
    ),
    Migration(
        3,
        (
            "CREATE TABLE IF NOT EXISTS consent_profile_merges (profile_id text, merge_id text,"
            " PRIMARY KEY ((profile_id), merge_id))",
            # Privacy requests are few (a handful a day): one partition lists them all.
            "CREATE TABLE IF NOT EXISTS privacy_requests (bucket int, request_id text, request blob,"
            " PRIMARY KEY ((bucket), request_id))",
            "CREATE TABLE IF NOT EXISTS privacy_receipts (request_id text, participant text, summary blob,"
            " PRIMARY KEY ((request_id), participant))",
            "CREATE TABLE IF NOT EXISTS privacy_exports (request_id text, participant text, part int, json text,"
            " PRIMARY KEY ((request_id), participant, part))",
        ),
    ),
    # Expiring grants by the day they lapse; the sweeper reads the days up to today.
    Migration(
        4,
        (
            "CREATE TABLE IF NOT EXISTS consent_expiries (day text, expires_at timestamp, profile_id text, purpose text,"
            " PRIMARY KEY ((day), expires_at, profile_id, purpose))",
        ),
    ),
    # The outbox in write order per person (see above); consent_outbox is drained, then unused.
    Migration(
        5,
        (
            "CREATE TABLE IF NOT EXISTS consent_outbox_ordered (shard int, written timeuuid, message_id text,"
            " topic text, key text, payload blob, PRIMARY KEY ((shard), written, message_id))",
        ),
    ),
    Migration(6, ("CREATE TABLE IF NOT EXISTS consent_erasures (id_hash text PRIMARY KEY, erased_at timestamp)",)),
]
SWEEP_DAYS = 30  # how far back the sweeper looks for days it has not finished (a long outage)

_LEDGER = (
    "INSERT INTO consent_ledger (profile_id, purpose, decided_at, granted, source, entry) VALUES (?, ?, ?, ?, ?, ?)"
)
_EXPIRY = "INSERT INTO consent_expiries (day, expires_at, profile_id, purpose) VALUES (?, ?, ?, ?)"
_EXPIRY_DELETE = "DELETE FROM consent_expiries WHERE day = ? AND expires_at = ? AND profile_id = ? AND purpose = ?"
_OUTBOX = (
    "INSERT INTO consent_outbox_ordered (shard, written, message_id, topic, key, payload) VALUES (?, ?, ?, ?, ?, ?)"
)


def _shard(text: str) -> int:
    return zlib.crc32(text.encode()) % OUTBOX_SHARDS


def _outbox(outbox: list[OutboxEntry]) -> list[tuple[str, tuple]]:
    return [(_OUTBOX, (_shard(e.key), uuid.uuid1(), e.message_id, e.topic, e.key, e.payload)) for e in outbox]


def _day(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d")


def _expiry_rows(expiries: list[Expiry], cql: str) -> list[tuple[str, tuple]]:
    return [
        (
            cql,
            (_day(e.expires_us), datetime.fromtimestamp(e.expires_us / 1e6, tz=timezone.utc), e.profile_id, e.purpose),
        )
        for e in expiries
    ]


def _micros_of(when: datetime) -> int:
    return int(when.replace(tzinfo=timezone.utc).timestamp() * 1000) * 1000


class CassandraConsentStore(Repository, ConsentStore):
    db: CassandraStore

    def __init__(self, db: CassandraStore) -> None:
        super().__init__(db)
        self._written: dict[str, tuple[int, uuid.UUID]] = {}  # pending entries read: their row's key
        self._legacy_drained = False

    async def append(self, decisions: list[consent_pb2.ConsentDecision], outbox: list[OutboxEntry]) -> None:
        statements = [
            (
                _LEDGER,
                (
                    d.profile_id,
                    d.purpose,
                    datetime.fromtimestamp(micros(d.decided_at) / 1e6, tz=timezone.utc),
                    d.granted,
                    d.source,
                    d.SerializeToString(),
                ),
            )
            for d in decisions
        ]
        expiries = _expiry_rows(expiries_of(decisions), _EXPIRY)
        await self.db.execute_atomic(statements + expiries + _outbox(outbox))

    async def ledger(self, profile_ids: list[str], limit: int = 10000) -> list[consent_pb2.ConsentDecision]:
        decisions = []
        for profile_id in dict.fromkeys(profile_ids):
            rows = await self.db.execute(
                "SELECT profile_id, purpose, decided_at, granted, source, entry FROM consent_ledger"
                " WHERE profile_id = ? LIMIT ?",
                (profile_id, limit),
            )
            decisions += [
                decision_from(r.profile_id, r.purpose, _micros_of(r.decided_at), r.granted, r.source, r.entry)
                for r in rows
            ]
        decisions.sort(key=lambda d: (micros(d.decided_at), d.purpose, d.profile_id))
        return decisions[:limit]

    async def ledger_profiles(self, cursor: str, limit: int = 500) -> tuple[list[str], str]:
        # In token order: the cursor is the last partition's token.
        rows = await self.db.execute(
            "SELECT DISTINCT token(profile_id) AS t, profile_id FROM consent_ledger WHERE token(profile_id) > ? LIMIT ?",
            (int(cursor) if cursor else -(2**63), limit),
        )
        ids = [r.profile_id for r in rows]
        return ids, str(rows[-1].t) if len(ids) == limit else ""

    async def head(self, profile_id: str) -> str:
        rows = await self.db.execute("SELECT head FROM consent_heads WHERE profile_id = ?", (profile_id,))
        return rows[0].head if rows and rows[0].head else profile_id

    async def members(self, head: str) -> list[str]:
        rows = await self.db.execute("SELECT profile_id FROM consent_members WHERE head = ?", (head,))
        return [head, *(r.profile_id for r in rows if r.profile_id != head)]

    async def merge_record(self, merge_id: str) -> MergeRecord | None:
        rows = await self.db.execute(
            "SELECT survivor, moves, split FROM consent_merges WHERE merge_id = ?", (merge_id,)
        )
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

    @staticmethod
    def _index(record: MergeRecord) -> list[tuple[str, tuple]]:
        return [
            ("INSERT INTO consent_profile_merges (profile_id, merge_id) VALUES (?, ?)", (p, record.merge_id))
            for p in {record.survivor, *(m.profile_id for m in record.moves)}
        ]

    async def apply_merge(self, record: MergeRecord, outbox: list[OutboxEntry]) -> None:
        statements = self._index(record)
        for move in record.moves:
            statements += self._point(move.profile_id, move.previous_head, record.survivor)
        statements.append(
            (
                "INSERT INTO consent_merges (merge_id, survivor, moves, split) VALUES (?, ?, ?, false)",
                (record.merge_id, record.survivor, encode_moves(record.moves)),
            )
        )
        await self.db.execute_atomic(statements + _outbox(outbox))

    async def apply_split(self, record: MergeRecord, outbox: list[OutboxEntry]) -> None:
        statements = self._index(record)
        for move in record.moves:
            statements += self._point(move.profile_id, record.survivor, move.previous_head)
        statements.append(
            (
                "INSERT INTO consent_merges (merge_id, survivor, moves, split) VALUES (?, ?, ?, true)",
                (record.merge_id, record.survivor, encode_moves(record.moves)),
            )
        )
        await self.db.execute_atomic(statements + _outbox(outbox))

    async def put_request(self, request: privacy_pb2.PrivacyRequest, outbox: list[OutboxEntry]) -> bool:
        applied, _ = await self.db.execute_lwt(
            "INSERT INTO privacy_requests (bucket, request_id, request) VALUES (0, ?, ?) IF NOT EXISTS",
            (request.request_id, request.SerializeToString()),
        )
        if applied and outbox:
            # After the LWT (a batch may not mix one with other tables): a crash in between
            # leaves a request that was never announced, which the relay cannot see; the
            # caller's retry with the same request_id finds it and re-announces (see privacy.py).
            await self.db.execute_atomic(_outbox(outbox))
        return applied

    async def request(self, request_id: str) -> privacy_pb2.PrivacyRequest | None:
        rows = await self.db.execute(
            "SELECT request FROM privacy_requests WHERE bucket = 0 AND request_id = ?", (request_id,)
        )
        if not rows:
            return None
        request = privacy_pb2.PrivacyRequest.FromString(rows[0].request)
        receipts = await self.db.execute("SELECT summary FROM privacy_receipts WHERE request_id = ?", (request_id,))
        request.receipts.extend(privacy_pb2.PrivacyReceiptSummary.FromString(r.summary) for r in receipts)
        return request

    async def requests(self, limit: int = 10000) -> list[privacy_pb2.PrivacyRequest]:
        rows = await self.db.execute("SELECT request FROM privacy_requests WHERE bucket = 0 LIMIT ?", (limit,))
        return [privacy_pb2.PrivacyRequest.FromString(r.request) for r in rows]

    async def complete_request(self, request: privacy_pb2.PrivacyRequest) -> None:
        stored = privacy_pb2.PrivacyRequest()
        stored.CopyFrom(request)
        del stored.receipts[:]
        await self.db.execute(
            "UPDATE privacy_requests SET request = ? WHERE bucket = 0 AND request_id = ?",
            (stored.SerializeToString(), request.request_id),
        )

    async def put_receipt(
        self,
        request_id: str,
        participant: str,
        part: int,
        summary: privacy_pb2.PrivacyReceiptSummary | None,
        export_json: str,
        outbox: list[OutboxEntry],
    ) -> None:
        statements: list[tuple[str, tuple]] = []
        if export_json:
            statements.append(
                (
                    "INSERT INTO privacy_exports (request_id, participant, part, json) VALUES (?, ?, ?, ?)",
                    (request_id, participant, part, export_json),
                )
            )
        if summary is not None:
            statements.append(
                (
                    "INSERT INTO privacy_receipts (request_id, participant, summary) VALUES (?, ?, ?)",
                    (request_id, participant, summary.SerializeToString()),
                )
            )
        if statements or outbox:
            await self.db.execute_atomic(statements + _outbox(outbox))

    async def export_parts(self, request_id: str) -> list[tuple[str, int, str]]:
        rows = await self.db.execute(
            "SELECT participant, part, json FROM privacy_exports WHERE request_id = ?", (request_id,)
        )
        return [(r.participant, r.part, r.json) for r in rows]

    async def delete_export(self, request_id: str) -> None:
        await self.db.execute("DELETE FROM privacy_exports WHERE request_id = ?", (request_id,))

    async def record_erasures(self, profile_ids: list[str]) -> None:
        now = datetime.now(timezone.utc)
        await self.db.execute_together(
            [
                ("INSERT INTO consent_erasures (id_hash, erased_at) VALUES (?, ?)", (erasure_key(p), now))
                for p in profile_ids
            ]
        )

    async def erased(self, profile_ids: list[str]) -> set[str]:
        keys = {erasure_key(p): p for p in profile_ids}
        if not keys:
            return set()
        rows = await self.db.execute("SELECT id_hash FROM consent_erasures WHERE id_hash IN ?", (list(keys),))
        return {keys[r.id_hash] for r in rows}

    async def erase_profiles(self, profile_ids: list[str]) -> dict[str, int]:
        counts = {"consent_ledger": 0, "consent_heads": 0}
        statements: list[tuple[str, tuple]] = []
        merge_ids: set[str] = set()
        for profile_id in dict.fromkeys(profile_ids):
            rows = await self.db.execute(
                "SELECT profile_id, purpose, decided_at, granted, source, entry FROM consent_ledger WHERE profile_id = ?",
                (profile_id,),
            )
            counts["consent_ledger"] += len(rows)
            decisions = [
                decision_from(r.profile_id, r.purpose, _micros_of(r.decided_at), r.granted, r.source, r.entry)
                for r in rows
            ]
            statements += _expiry_rows(expiries_of(decisions), _EXPIRY_DELETE)
            statements.append(("DELETE FROM consent_ledger WHERE profile_id = ?", (profile_id,)))
            heads = await self.db.execute("SELECT head FROM consent_heads WHERE profile_id = ?", (profile_id,))
            for row in heads:
                counts["consent_heads"] += 1
                statements.append(
                    ("DELETE FROM consent_members WHERE head = ? AND profile_id = ?", (row.head, profile_id))
                )
            statements.append(("DELETE FROM consent_heads WHERE profile_id = ?", (profile_id,)))
            statements.append(("DELETE FROM consent_members WHERE head = ?", (profile_id,)))
            merges = await self.db.execute(
                "SELECT merge_id FROM consent_profile_merges WHERE profile_id = ?", (profile_id,)
            )
            merge_ids.update(row.merge_id for row in merges)
            statements.append(("DELETE FROM consent_profile_merges WHERE profile_id = ?", (profile_id,)))
        statements += [("DELETE FROM consent_merges WHERE merge_id = ?", (m,)) for m in sorted(merge_ids)]
        counts["consent_merges"] = len(merge_ids)
        if statements:
            await self.db.execute_atomic(statements)
        return counts

    async def due_expiries(self, now_us: int, limit: int = 500) -> list[Expiry]:
        found: list[Expiry] = []
        day_us = 86_400 * 1_000_000
        for back in range(SWEEP_DAYS, -1, -1):
            rows = await self.db.execute(
                "SELECT expires_at, profile_id, purpose FROM consent_expiries WHERE day = ? AND expires_at <= ? LIMIT ?",
                (
                    _day(now_us - back * day_us),
                    datetime.fromtimestamp(now_us / 1e6, tz=timezone.utc),
                    limit - len(found),
                ),
            )
            found += [Expiry(_micros_of(r.expires_at), r.profile_id, r.purpose) for r in rows]
            if len(found) >= limit:
                break
        return found

    async def expiry_done(self, expiries: list[Expiry]) -> None:
        await self.db.execute_together(_expiry_rows(expiries, _EXPIRY_DELETE))

    async def outbox_pending(self, limit: int = 500) -> list[OutboxEntry]:
        if not self._legacy_drained:  # entries written before migration 5, in no order: first
            legacy = []
            for shard in range(OUTBOX_SHARDS):
                rows = await self.db.execute(
                    "SELECT message_id, topic, key, payload FROM consent_outbox WHERE shard = ? LIMIT ?", (shard, limit)
                )
                legacy += [OutboxEntry(r.message_id, r.topic, r.key, r.payload) for r in rows]
            if legacy:
                return legacy[:limit]
            self._legacy_drained = True
        entries = []
        for shard in range(OUTBOX_SHARDS):
            rows = await self.db.execute(
                "SELECT written, message_id, topic, key, payload FROM consent_outbox_ordered WHERE shard = ? LIMIT ?",
                (shard, limit),
            )
            for r in rows:
                self._written[r.message_id] = (shard, r.written)
                entries.append(OutboxEntry(r.message_id, r.topic, r.key, r.payload))
        # A cut keeps each shard's oldest entries: a person's are in one shard, in order.
        return entries[:limit]

    async def outbox_done(self, message_ids: list[str]) -> None:
        statements: list[tuple[str, tuple]] = []
        for m in message_ids:
            if (where := self._written.pop(m, None)) is not None:
                statements.append(
                    (
                        "DELETE FROM consent_outbox_ordered WHERE shard = ? AND written = ? AND message_id = ?",
                        (*where, m),
                    )
                )
            else:  # not read from the ordered outbox by this process: an entry of the old one
                statements.append(("DELETE FROM consent_outbox WHERE shard = ? AND message_id = ?", (_shard(m), m)))
        await self.db.execute_together(statements)
