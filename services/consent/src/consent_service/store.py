"""The consent ledger: every decision kept, the latest decision per purpose answers Check.

Rows are keyed by (profile, purpose, decided_at), so recording the same decision twice is a
no-op and a decision that arrives late never hides a newer one.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol

from google.protobuf import timestamp_pb2

from mosaic.consent.v1 import consent_pb2
from mosaic.platform.store import Migration, Repository, open_repository
from mosaic.platform.store.cassandra import CassandraStore
from mosaic.platform.store.sqlite import SqliteStore

CASSANDRA = [
    Migration(1, (
        "CREATE TABLE IF NOT EXISTS consent_ledger ("
        " profile_id text, purpose text, decided_at timestamp, granted boolean, source text,"
        " PRIMARY KEY ((profile_id), purpose, decided_at)) WITH CLUSTERING ORDER BY (purpose ASC, decided_at DESC)",
    )),
]
SQLITE = [
    Migration(1, (
        "CREATE TABLE consent_ledger (profile_id TEXT, purpose TEXT, decided_at_us INTEGER, granted INTEGER,"
        " source TEXT, PRIMARY KEY (profile_id, purpose, decided_at_us))",
    )),
]


def _micros(ts: timestamp_pb2.Timestamp) -> int:
    # Cassandra timestamps keep milliseconds; the ledger keeps what both backends can.
    return ts.seconds * 1_000_000 + (ts.nanos // 1_000_000) * 1000


def _timestamp(micros: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(micros)
    return ts


class ConsentStore(Protocol):
    async def record(self, decision: consent_pb2.ConsentDecision) -> None: ...
    async def latest(self, profile_id: str, purpose: str) -> consent_pb2.ConsentDecision | None: ...
    async def history(self, profile_id: str) -> list[consent_pb2.ConsentDecision]:
        """Every decision of a person, oldest first."""
    async def close(self) -> None: ...


class CassandraConsentStore(Repository):
    db: CassandraStore

    async def record(self, decision):
        when = datetime.fromtimestamp(_micros(decision.decided_at) / 1e6, tz=timezone.utc)
        await self.db.execute(
            "INSERT INTO consent_ledger (profile_id, purpose, decided_at, granted, source) VALUES (?, ?, ?, ?, ?)",
            (decision.profile_id, decision.purpose, when, decision.granted, decision.source),
        )

    def _decision(self, row) -> consent_pb2.ConsentDecision:
        when = row.decided_at.replace(tzinfo=timezone.utc)
        return consent_pb2.ConsentDecision(
            profile_id=row.profile_id, purpose=row.purpose, granted=row.granted, source=row.source or "",
            decided_at=_timestamp(int(when.timestamp() * 1_000_000)),
        )

    async def latest(self, profile_id, purpose):
        rows = await self.db.execute(
            "SELECT profile_id, purpose, decided_at, granted, source FROM consent_ledger"
            " WHERE profile_id = ? AND purpose = ? LIMIT 1",
            (profile_id, purpose),
        )
        return self._decision(rows[0]) if rows else None

    async def history(self, profile_id):
        rows = await self.db.execute(
            "SELECT profile_id, purpose, decided_at, granted, source FROM consent_ledger WHERE profile_id = ? LIMIT 10000",
            (profile_id,),
        )
        return sorted((self._decision(r) for r in rows), key=lambda d: (_micros(d.decided_at), d.purpose))



class SqliteConsentStore(Repository):
    db: SqliteStore

    async def record(self, decision):
        await self.db.execute(
            "INSERT OR REPLACE INTO consent_ledger VALUES (?, ?, ?, ?, ?)",
            (decision.profile_id, decision.purpose, _micros(decision.decided_at), int(decision.granted), decision.source),
        )

    @staticmethod
    def _decision(row) -> consent_pb2.ConsentDecision:
        return consent_pb2.ConsentDecision(
            profile_id=row[0], purpose=row[1], decided_at=_timestamp(row[2]), granted=bool(row[3]), source=row[4] or ""
        )

    async def latest(self, profile_id, purpose):
        rows = await self.db.execute(
            "SELECT * FROM consent_ledger WHERE profile_id = ? AND purpose = ? ORDER BY decided_at_us DESC LIMIT 1",
            (profile_id, purpose),
        )
        return self._decision(rows[0]) if rows else None

    async def history(self, profile_id):
        rows = await self.db.execute(
            "SELECT * FROM consent_ledger WHERE profile_id = ? ORDER BY decided_at_us, purpose", (profile_id,)
        )
        return [self._decision(r) for r in rows]



async def open_store(settings) -> ConsentStore:
    return await open_repository(
        settings, "consent", cassandra=(CASSANDRA, CassandraConsentStore), sqlite=(SQLITE, SqliteConsentStore)
    )
