"""Destinations, the delivery log and the dead-letter store.

A delivery's id is its idempotency key (destination, trigger, profile, profile version): a
redelivered membership change finds the delivery already decided and queues nothing twice.
Dead letters are kept by destination, in delivery id order, so a page is one range read.
Deliveries and dead letters are kept for their retention (mosaic.platform.retention) from
their last write: a Cassandra TTL, or an expiry column the embedded store's reads respect and
its sweeper deletes by.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform.errors import AlreadyExists
from mosaic.platform.store import Migration, Repository, open_repository
from mosaic.platform.store.cassandra import CassandraStore
from mosaic.platform.store.sqlite import SqliteStore

CASSANDRA = [
    Migration(
        1,
        (
            "CREATE TABLE IF NOT EXISTS delivery_destinations (destination_id text PRIMARY KEY, definition blob)",
            "CREATE TABLE IF NOT EXISTS delivery_log ("
            " profile_id text, delivery_id text, record blob, PRIMARY KEY ((profile_id), delivery_id))",
        ),
    ),
    Migration(
        2,
        (
            "CREATE TABLE IF NOT EXISTS delivery_dead_letters ("
            " destination_id text, delivery_id text, letter blob, PRIMARY KEY ((destination_id), delivery_id))",
            # A person's dead letters, so erasing a person is one partition read, not a scan.
            "CREATE TABLE IF NOT EXISTS delivery_dead_letters_by_profile ("
            " profile_id text, destination_id text, delivery_id text, PRIMARY KEY ((profile_id), destination_id, delivery_id))",
        ),
    ),
]
SQLITE = [
    Migration(
        1,
        (
            "CREATE TABLE delivery_destinations (destination_id TEXT PRIMARY KEY, definition BLOB)",
            "CREATE TABLE delivery_log (profile_id TEXT, delivery_id TEXT, record BLOB, PRIMARY KEY (profile_id, delivery_id))",
        ),
    ),
    Migration(
        2,
        (
            "CREATE TABLE delivery_dead_letters (destination_id TEXT, delivery_id TEXT, letter BLOB,"
            " PRIMARY KEY (destination_id, delivery_id))",
            "CREATE TABLE delivery_dead_letters_by_profile (profile_id TEXT, destination_id TEXT, delivery_id TEXT,"
            " PRIMARY KEY (profile_id, destination_id, delivery_id))",
        ),
    ),
    Migration(
        3,
        (
            # Retention: when a row expires (NULL: kept), and indexes for the sweeper.
            "ALTER TABLE delivery_log ADD COLUMN expires_us INTEGER",
            "ALTER TABLE delivery_dead_letters ADD COLUMN expires_us INTEGER",
            "ALTER TABLE delivery_dead_letters_by_profile ADD COLUMN expires_us INTEGER",
            "CREATE INDEX delivery_log_expiry ON delivery_log (expires_us)",
            "CREATE INDEX delivery_dead_letters_expiry ON delivery_dead_letters (expires_us)",
            "CREATE INDEX delivery_dead_letters_by_profile_expiry ON delivery_dead_letters_by_profile (expires_us)",
        ),
    ),
]
# A row the embedded store still holds but whose expiry has passed is not read.
_KEPT = "(expires_us IS NULL OR expires_us > ?)"


def _now_us() -> int:
    return time.time_ns() // 1000


def _expires(ttl: int) -> int | None:
    return _now_us() + ttl * 1_000_000 if ttl else None


DeadLetter = delivery_pb2.DeadLetter


class DeliveryStore(Protocol):
    async def create_destination(self, destination: delivery_pb2.Destination) -> None: ...
    async def destinations(self) -> list[delivery_pb2.Destination]: ...
    async def delete_destination(self, destination_id: str) -> None: ...
    async def delivery(self, profile_id: str, delivery_id: str) -> delivery_pb2.Delivery | None: ...
    async def save_delivery(self, delivery: delivery_pb2.Delivery) -> None: ...
    async def save_deliveries(self, deliveries: Sequence[delivery_pb2.Delivery]) -> None: ...
    async def deliveries(self, profile_id: str, after: str = "", limit: int = 0) -> list[delivery_pb2.Delivery]:
        """The profile's deliveries with ids after `after`, by id; at most `limit` (0: all that the
        backend reads at once, 1000 on Cassandra)."""
        ...

    async def put_dead_letter(self, letter: DeadLetter) -> None: ...
    async def dead_letter(self, destination_id: str, delivery_id: str) -> DeadLetter | None: ...
    async def dead_letters(self, destination_id: str, after: str, limit: int) -> list[DeadLetter]: ...
    async def delete_dead_letter(self, letter: DeadLetter) -> None: ...
    async def erase_person(self, profile_id: str) -> int:
        """Delete the person's delivery log and dead letters; how many records went."""
        ...

    async def close(self) -> None: ...


class CassandraDeliveryStore(Repository):
    db: CassandraStore
    log_ttl = 0  # seconds a delivery record is kept (0: for good); set by open_store
    dead_letter_ttl = 0

    async def create_destination(self, destination):
        applied, _ = await self.db.execute_lwt(
            "INSERT INTO delivery_destinations (destination_id, definition) VALUES (?, ?) IF NOT EXISTS",
            (destination.destination_id, destination.SerializeToString()),
        )
        if not applied:
            raise AlreadyExists("destination", destination.destination_id)

    async def destinations(self):
        rows = await self.db.execute("SELECT definition FROM delivery_destinations LIMIT 10000")
        return sorted((delivery_pb2.Destination.FromString(r.definition) for r in rows), key=lambda d: d.destination_id)

    async def delete_destination(self, destination_id):
        await self.db.execute("DELETE FROM delivery_destinations WHERE destination_id = ?", (destination_id,))

    async def delivery(self, profile_id, delivery_id):
        rows = await self.db.execute(
            "SELECT record FROM delivery_log WHERE profile_id = ? AND delivery_id = ?", (profile_id, delivery_id)
        )
        return delivery_pb2.Delivery.FromString(rows[0].record) if rows else None

    async def save_delivery(self, delivery):
        await self.save_deliveries([delivery])

    async def save_deliveries(self, deliveries):
        # One request per chunk: the records are of different people (partitions), so the
        # batch is only a saved round trip, bounded to stay under the node's batch warning.
        statement = "INSERT INTO delivery_log (profile_id, delivery_id, record) VALUES (?, ?, ?) USING TTL ?"
        for start in range(0, len(deliveries), 10):
            chunk = deliveries[start : start + 10]
            await self.db.execute_together(
                [(statement, (d.profile_id, d.delivery_id, d.SerializeToString(), self.log_ttl)) for d in chunk]
            )

    async def deliveries(self, profile_id, after="", limit=0):
        rows = await self.db.execute(
            "SELECT record FROM delivery_log WHERE profile_id = ? AND delivery_id > ? LIMIT ?",
            (profile_id, after, limit or 1000),
        )
        return [delivery_pb2.Delivery.FromString(r.record) for r in rows]

    async def put_dead_letter(self, letter):
        d = letter.delivery
        await self.db.execute_together(
            [
                (
                    "INSERT INTO delivery_dead_letters (destination_id, delivery_id, letter) VALUES (?, ?, ?) USING TTL ?",
                    (d.destination_id, d.delivery_id, letter.SerializeToString(), self.dead_letter_ttl),
                ),
                (
                    "INSERT INTO delivery_dead_letters_by_profile (profile_id, destination_id, delivery_id)"
                    " VALUES (?, ?, ?) USING TTL ?",
                    (d.profile_id, d.destination_id, d.delivery_id, self.dead_letter_ttl),
                ),
            ]
        )

    async def dead_letter(self, destination_id, delivery_id):
        rows = await self.db.execute(
            "SELECT letter FROM delivery_dead_letters WHERE destination_id = ? AND delivery_id = ?",
            (destination_id, delivery_id),
        )
        return DeadLetter.FromString(rows[0].letter) if rows else None

    async def dead_letters(self, destination_id, after, limit):
        rows = await self.db.execute(
            "SELECT letter FROM delivery_dead_letters WHERE destination_id = ? AND delivery_id > ? LIMIT ?",
            (destination_id, after, limit),
        )
        return [DeadLetter.FromString(r.letter) for r in rows]

    async def delete_dead_letter(self, letter):
        d = letter.delivery
        await self.db.execute_together(
            [
                (
                    "DELETE FROM delivery_dead_letters WHERE destination_id = ? AND delivery_id = ?",
                    (d.destination_id, d.delivery_id),
                ),
                (
                    "DELETE FROM delivery_dead_letters_by_profile WHERE profile_id = ? AND destination_id = ? AND delivery_id = ?",
                    (d.profile_id, d.destination_id, d.delivery_id),
                ),
            ]
        )

    async def erase_person(self, profile_id):
        letters = await self.db.execute(
            "SELECT destination_id, delivery_id FROM delivery_dead_letters_by_profile WHERE profile_id = ? LIMIT 10000",
            (profile_id,),
        )
        records = await self.deliveries(profile_id)
        for r in letters:
            await self.db.execute(
                "DELETE FROM delivery_dead_letters WHERE destination_id = ? AND delivery_id = ?",
                (r.destination_id, r.delivery_id),
            )
        await self.db.execute_together(
            [
                ("DELETE FROM delivery_dead_letters_by_profile WHERE profile_id = ?", (profile_id,)),
                ("DELETE FROM delivery_log WHERE profile_id = ?", (profile_id,)),
            ]
        )
        return len(records) + len(letters)


class SqliteDeliveryStore(Repository):
    db: SqliteStore
    log_ttl = 0
    dead_letter_ttl = 0

    async def create_destination(self, destination):
        def work(db) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO delivery_destinations VALUES (?, ?)",
                (destination.destination_id, destination.SerializeToString()),
            )
            return cursor.rowcount == 1

        if not await self.db.transaction(work):
            raise AlreadyExists("destination", destination.destination_id)

    async def destinations(self):
        rows = await self.db.execute("SELECT definition FROM delivery_destinations ORDER BY destination_id")
        return [delivery_pb2.Destination.FromString(r[0]) for r in rows]

    async def delete_destination(self, destination_id):
        await self.db.execute("DELETE FROM delivery_destinations WHERE destination_id = ?", (destination_id,))

    async def delivery(self, profile_id, delivery_id):
        rows = await self.db.execute(
            f"SELECT record FROM delivery_log WHERE profile_id = ? AND delivery_id = ? AND {_KEPT}",
            (profile_id, delivery_id, _now_us()),
        )
        return delivery_pb2.Delivery.FromString(rows[0][0]) if rows else None

    async def save_delivery(self, delivery):
        await self.save_deliveries([delivery])

    async def save_deliveries(self, deliveries):
        expires = _expires(self.log_ttl)
        rows = [(d.profile_id, d.delivery_id, d.SerializeToString(), expires) for d in deliveries]
        await self.db.transaction(
            lambda db: db.executemany("INSERT OR REPLACE INTO delivery_log VALUES (?, ?, ?, ?)", rows)
        )

    async def deliveries(self, profile_id, after="", limit=0):
        rows = await self.db.execute(
            f"SELECT record FROM delivery_log WHERE profile_id = ? AND delivery_id > ? AND {_KEPT}"
            " ORDER BY delivery_id LIMIT ?",
            (profile_id, after, _now_us(), limit or -1),
        )
        return [delivery_pb2.Delivery.FromString(r[0]) for r in rows]

    async def put_dead_letter(self, letter):
        d = letter.delivery
        expires = _expires(self.dead_letter_ttl)

        def work(db) -> None:
            db.execute(
                "INSERT OR REPLACE INTO delivery_dead_letters VALUES (?, ?, ?, ?)",
                (d.destination_id, d.delivery_id, letter.SerializeToString(), expires),
            )
            db.execute(
                "INSERT OR REPLACE INTO delivery_dead_letters_by_profile VALUES (?, ?, ?, ?)",
                (d.profile_id, d.destination_id, d.delivery_id, expires),
            )

        await self.db.transaction(work)

    async def dead_letter(self, destination_id, delivery_id):
        rows = await self.db.execute(
            f"SELECT letter FROM delivery_dead_letters WHERE destination_id = ? AND delivery_id = ? AND {_KEPT}",
            (destination_id, delivery_id, _now_us()),
        )
        return DeadLetter.FromString(rows[0][0]) if rows else None

    async def dead_letters(self, destination_id, after, limit):
        rows = await self.db.execute(
            f"SELECT letter FROM delivery_dead_letters WHERE destination_id = ? AND delivery_id > ? AND {_KEPT}"
            " ORDER BY delivery_id LIMIT ?",
            (destination_id, after, _now_us(), limit),
        )
        return [DeadLetter.FromString(r[0]) for r in rows]

    async def delete_dead_letter(self, letter):
        d = letter.delivery

        def work(db) -> None:
            db.execute(
                "DELETE FROM delivery_dead_letters WHERE destination_id = ? AND delivery_id = ?",
                (d.destination_id, d.delivery_id),
            )
            db.execute(
                "DELETE FROM delivery_dead_letters_by_profile WHERE profile_id = ? AND destination_id = ?"
                " AND delivery_id = ?",
                (d.profile_id, d.destination_id, d.delivery_id),
            )

        await self.db.transaction(work)

    async def erase_person(self, profile_id):
        def work(db) -> int:
            letters = db.execute(
                "SELECT destination_id, delivery_id FROM delivery_dead_letters_by_profile WHERE profile_id = ?",
                (profile_id,),
            ).fetchall()
            db.executemany("DELETE FROM delivery_dead_letters WHERE destination_id = ? AND delivery_id = ?", letters)
            db.execute("DELETE FROM delivery_dead_letters_by_profile WHERE profile_id = ?", (profile_id,))
            records = db.execute("DELETE FROM delivery_log WHERE profile_id = ?", (profile_id,)).rowcount
            return records + len(letters)

        return await self.db.transaction(work)

    async def sweep(self, now_us: int) -> dict[str, int]:
        """Delete the delivery records and dead letters past their expiry; rows removed by kind."""

        def work(db) -> dict[str, int]:
            expired = "WHERE expires_us IS NOT NULL AND expires_us <= ?"
            records = db.execute(f"DELETE FROM delivery_log {expired}", (now_us,)).rowcount
            letters = db.execute(f"DELETE FROM delivery_dead_letters {expired}", (now_us,)).rowcount
            db.execute(f"DELETE FROM delivery_dead_letters_by_profile {expired}", (now_us,))
            return {"deliveries": records, "dead_letters": letters}

        return await self.db.transaction(work)


async def open_store(settings, log_ttl: int = 0, dead_letter_ttl: int = 0) -> DeliveryStore:
    """The delivery store; records are kept `log_ttl` seconds, dead letters `dead_letter_ttl` (0: for good)."""
    store = await open_repository(
        settings, "delivery", cassandra=(CASSANDRA, CassandraDeliveryStore), sqlite=(SQLITE, SqliteDeliveryStore)
    )
    store.log_ttl, store.dead_letter_ttl = log_ttl, dead_letter_ttl
    return store
