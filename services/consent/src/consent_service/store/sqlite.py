"""The consent store on SQLite (embedded)."""

from __future__ import annotations

import time

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
from mosaic.platform.store.sqlite import SqliteStore

MIGRATIONS = [
    Migration(
        1,
        (
            "CREATE TABLE consent_ledger (profile_id TEXT, purpose TEXT, decided_at_us INTEGER, granted INTEGER,"
            " source TEXT, PRIMARY KEY (profile_id, purpose, decided_at_us))",
        ),
    ),
    Migration(
        2,
        (
            "ALTER TABLE consent_ledger ADD COLUMN entry BLOB",
            "CREATE TABLE consent_heads (profile_id TEXT PRIMARY KEY, head TEXT NOT NULL)",
            "CREATE INDEX consent_heads_by_head ON consent_heads (head)",
            "CREATE TABLE consent_merges (merge_id TEXT PRIMARY KEY, survivor TEXT, moves TEXT, split INTEGER)",
            "CREATE TABLE consent_outbox (message_id TEXT PRIMARY KEY, topic TEXT, key TEXT, payload BLOB)",
        ),
    ),
    Migration(
        3,
        (
            "CREATE TABLE consent_profile_merges (profile_id TEXT, merge_id TEXT, PRIMARY KEY (profile_id, merge_id))",
            "CREATE TABLE privacy_requests (request_id TEXT PRIMARY KEY, request BLOB)",
            "CREATE TABLE privacy_receipts (request_id TEXT, participant TEXT, summary BLOB, PRIMARY KEY (request_id, participant))",
            "CREATE TABLE privacy_exports (request_id TEXT, participant TEXT, part INTEGER, json TEXT,"
            " PRIMARY KEY (request_id, participant, part))",
        ),
    ),
    Migration(
        4,
        (
            "CREATE TABLE consent_expiries (expires_us INTEGER, profile_id TEXT, purpose TEXT,"
            " PRIMARY KEY (expires_us, profile_id, purpose))",
        ),
    ),
    Migration(5, ("CREATE TABLE consent_erasures (id_hash TEXT PRIMARY KEY, erased_us INTEGER)",)),
]

_LEDGER = "INSERT OR REPLACE INTO consent_ledger VALUES (?, ?, ?, ?, ?, ?)"
_OUTBOX = "INSERT OR REPLACE INTO consent_outbox VALUES (?, ?, ?, ?)"


def _put_outbox(db, outbox: list[OutboxEntry]) -> None:
    db.executemany(_OUTBOX, [(e.message_id, e.topic, e.key, e.payload) for e in outbox])


def _index_merge(db, record: MergeRecord) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO consent_profile_merges VALUES (?, ?)",
        [(p, record.merge_id) for p in {record.survivor, *(m.profile_id for m in record.moves)}],
    )


def _point(db, profile_id: str, head: str) -> None:
    if profile_id == head:
        db.execute("DELETE FROM consent_heads WHERE profile_id = ?", (profile_id,))
    else:
        db.execute("INSERT OR REPLACE INTO consent_heads VALUES (?, ?)", (profile_id, head))


class SqliteConsentStore(Repository, ConsentStore):
    db: SqliteStore

    async def append(self, decisions: list[consent_pb2.ConsentDecision], outbox: list[OutboxEntry]) -> None:
        rows = [
            (d.profile_id, d.purpose, micros(d.decided_at), int(d.granted), d.source, d.SerializeToString())
            for d in decisions
        ]

        expiries = [(e.expires_us, e.profile_id, e.purpose) for e in expiries_of(decisions)]

        def write(db):
            db.executemany(_LEDGER, rows)
            db.executemany("INSERT OR IGNORE INTO consent_expiries VALUES (?, ?, ?)", expiries)
            _put_outbox(db, outbox)

        await self.db.transaction(write)

    async def ledger(self, profile_ids: list[str], limit: int = 10000) -> list[consent_pb2.ConsentDecision]:
        if not profile_ids:
            return []
        marks = ",".join("?" * len(profile_ids))
        rows = await self.db.execute(
            "SELECT profile_id, purpose, decided_at_us, granted, source, entry FROM consent_ledger"
            f" WHERE profile_id IN ({marks}) ORDER BY decided_at_us, purpose, profile_id LIMIT ?",
            (*profile_ids, limit),
        )
        return [decision_from(r[0], r[1], r[2], bool(r[3]), r[4], r[5]) for r in rows]

    async def ledger_profiles(self, cursor: str, limit: int = 500) -> tuple[list[str], str]:
        rows = await self.db.execute(
            "SELECT DISTINCT profile_id FROM consent_ledger WHERE profile_id > ? ORDER BY profile_id LIMIT ?",
            (cursor, limit),
        )
        ids = [r[0] for r in rows]
        return ids, ids[-1] if len(ids) == limit else ""

    async def head(self, profile_id: str) -> str:
        rows = await self.db.execute("SELECT head FROM consent_heads WHERE profile_id = ?", (profile_id,))
        return rows[0][0] if rows else profile_id

    async def members(self, head: str) -> list[str]:
        rows = await self.db.execute("SELECT profile_id FROM consent_heads WHERE head = ? ORDER BY profile_id", (head,))
        return [head, *(r[0] for r in rows)]

    async def merge_record(self, merge_id: str) -> MergeRecord | None:
        rows = await self.db.execute(
            "SELECT survivor, moves, split FROM consent_merges WHERE merge_id = ?", (merge_id,)
        )
        if not rows:
            return None
        survivor, moves, split = rows[0]
        return MergeRecord(merge_id, survivor, decode_moves(moves), bool(split))

    async def apply_merge(self, record: MergeRecord, outbox: list[OutboxEntry]) -> None:
        def write(db):
            for move in record.moves:
                _point(db, move.profile_id, record.survivor)
            db.execute(
                "INSERT OR REPLACE INTO consent_merges VALUES (?, ?, ?, 0)",
                (record.merge_id, record.survivor, encode_moves(record.moves)),
            )
            _index_merge(db, record)
            _put_outbox(db, outbox)

        await self.db.transaction(write)

    async def apply_split(self, record: MergeRecord, outbox: list[OutboxEntry]) -> None:
        def write(db):
            for move in record.moves:
                _point(db, move.profile_id, move.previous_head)
            db.execute(
                "INSERT OR REPLACE INTO consent_merges VALUES (?, ?, ?, 1)",
                (record.merge_id, record.survivor, encode_moves(record.moves)),
            )
            _index_merge(db, record)
            _put_outbox(db, outbox)

        await self.db.transaction(write)

    async def put_request(self, request: privacy_pb2.PrivacyRequest, outbox: list[OutboxEntry]) -> bool:
        def write(db):
            if db.execute("SELECT 1 FROM privacy_requests WHERE request_id = ?", (request.request_id,)).fetchall():
                return False
            db.execute("INSERT INTO privacy_requests VALUES (?, ?)", (request.request_id, request.SerializeToString()))
            _put_outbox(db, outbox)
            return True

        return await self.db.transaction(write)

    async def request(self, request_id: str) -> privacy_pb2.PrivacyRequest | None:
        rows = await self.db.execute("SELECT request FROM privacy_requests WHERE request_id = ?", (request_id,))
        if not rows:
            return None
        request = privacy_pb2.PrivacyRequest.FromString(rows[0][0])
        receipts = await self.db.execute(
            "SELECT summary FROM privacy_receipts WHERE request_id = ? ORDER BY participant", (request_id,)
        )
        request.receipts.extend(privacy_pb2.PrivacyReceiptSummary.FromString(r[0]) for r in receipts)
        return request

    async def requests(self, limit: int = 10000) -> list[privacy_pb2.PrivacyRequest]:
        rows = await self.db.execute("SELECT request FROM privacy_requests ORDER BY request_id LIMIT ?", (limit,))
        return [privacy_pb2.PrivacyRequest.FromString(r[0]) for r in rows]

    async def complete_request(self, request: privacy_pb2.PrivacyRequest) -> None:
        stored = privacy_pb2.PrivacyRequest()
        stored.CopyFrom(request)
        del stored.receipts[:]
        await self.db.execute(
            "UPDATE privacy_requests SET request = ? WHERE request_id = ?",
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
        def write(db):
            if export_json:
                db.execute(
                    "INSERT OR IGNORE INTO privacy_exports VALUES (?, ?, ?, ?)",
                    (request_id, participant, part, export_json),
                )
            if summary is not None:
                db.execute(
                    "INSERT OR IGNORE INTO privacy_receipts VALUES (?, ?, ?)",
                    (request_id, participant, summary.SerializeToString()),
                )
            _put_outbox(db, outbox)

        await self.db.transaction(write)

    async def export_parts(self, request_id: str) -> list[tuple[str, int, str]]:
        rows = await self.db.execute(
            "SELECT participant, part, json FROM privacy_exports WHERE request_id = ? ORDER BY participant, part",
            (request_id,),
        )
        return [tuple(r) for r in rows]

    async def delete_export(self, request_id: str) -> None:
        await self.db.execute("DELETE FROM privacy_exports WHERE request_id = ?", (request_id,))

    async def record_erasures(self, profile_ids: list[str]) -> None:
        def write(db):
            db.executemany(
                "INSERT OR IGNORE INTO consent_erasures VALUES (?, ?)",
                [(erasure_key(p), time.time_ns() // 1000) for p in profile_ids],
            )

        await self.db.transaction(write)

    async def erased(self, profile_ids: list[str]) -> set[str]:
        keys = {erasure_key(p): p for p in profile_ids}
        if not keys:
            return set()
        rows = await self.db.execute(
            f"SELECT id_hash FROM consent_erasures WHERE id_hash IN ({', '.join('?' * len(keys))})", list(keys)
        )
        return {keys[r[0]] for r in rows}

    async def erase_profiles(self, profile_ids: list[str]) -> dict[str, int]:
        marks = ",".join("?" * len(profile_ids))

        def write(db):
            counts = {}
            counts["consent_ledger"] = db.execute(
                f"DELETE FROM consent_ledger WHERE profile_id IN ({marks})", profile_ids
            ).rowcount
            db.execute(f"DELETE FROM consent_expiries WHERE profile_id IN ({marks})", profile_ids)
            counts["consent_heads"] = db.execute(
                f"DELETE FROM consent_heads WHERE profile_id IN ({marks}) OR head IN ({marks})",
                (*profile_ids, *profile_ids),
            ).rowcount
            merges = [
                r[0]
                for r in db.execute(
                    f"SELECT DISTINCT merge_id FROM consent_profile_merges WHERE profile_id IN ({marks})", profile_ids
                )
            ]
            counts["consent_merges"] = db.executemany(
                "DELETE FROM consent_merges WHERE merge_id = ?", [(m,) for m in merges]
            ).rowcount
            db.executemany("DELETE FROM consent_profile_merges WHERE merge_id = ?", [(m,) for m in merges])
            return counts

        return await self.db.transaction(write) if profile_ids else {}

    async def due_expiries(self, now_us: int, limit: int = 500) -> list[Expiry]:
        rows = await self.db.execute(
            "SELECT expires_us, profile_id, purpose FROM consent_expiries WHERE expires_us <= ? ORDER BY expires_us LIMIT ?",
            (now_us, limit),
        )
        return [Expiry(*r) for r in rows]

    async def expiry_done(self, expiries: list[Expiry]) -> None:
        def write(db):
            db.executemany(
                "DELETE FROM consent_expiries WHERE expires_us = ? AND profile_id = ? AND purpose = ?",
                [(e.expires_us, e.profile_id, e.purpose) for e in expiries],
            )

        await self.db.transaction(write)

    async def outbox_pending(self, limit: int = 500) -> list[OutboxEntry]:
        # In write order (rowid): a person's notices go out in the order they were written.
        rows = await self.db.execute(
            "SELECT message_id, topic, key, payload FROM consent_outbox ORDER BY rowid LIMIT ?", (limit,)
        )
        return [OutboxEntry(*r) for r in rows]

    async def outbox_done(self, message_ids: list[str]) -> None:
        def write(db):
            db.executemany("DELETE FROM consent_outbox WHERE message_id = ?", [(m,) for m in message_ids])

        await self.db.transaction(write)
