"""Destinations and the delivery log.

A delivery's id is its idempotency key (destination, profile, segment, profile version): a
redelivered membership change finds the finished delivery and sends nothing twice.
"""

from __future__ import annotations

from typing import Protocol

from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform.errors import AlreadyExists
from mosaic.platform.store import Migration, Repository, open_repository
from mosaic.platform.store.cassandra import CassandraStore
from mosaic.platform.store.sqlite import SqliteStore

CASSANDRA = [
    Migration(1, (
        "CREATE TABLE IF NOT EXISTS delivery_destinations (destination_id text PRIMARY KEY, definition blob)",
        "CREATE TABLE IF NOT EXISTS delivery_log ("
        " profile_id text, delivery_id text, record blob, PRIMARY KEY ((profile_id), delivery_id))",
    )),
]
SQLITE = [
    Migration(1, (
        "CREATE TABLE delivery_destinations (destination_id TEXT PRIMARY KEY, definition BLOB)",
        "CREATE TABLE delivery_log (profile_id TEXT, delivery_id TEXT, record BLOB, PRIMARY KEY (profile_id, delivery_id))",
    )),
]


class DeliveryStore(Protocol):
    async def create_destination(self, destination: delivery_pb2.Destination) -> None: ...
    async def destinations(self) -> list[delivery_pb2.Destination]: ...
    async def delivery(self, profile_id: str, delivery_id: str) -> delivery_pb2.Delivery | None: ...
    async def save_delivery(self, delivery: delivery_pb2.Delivery) -> None: ...
    async def deliveries(self, profile_id: str) -> list[delivery_pb2.Delivery]: ...
    async def close(self) -> None: ...


class CassandraDeliveryStore(Repository):
    db: CassandraStore

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

    async def delivery(self, profile_id, delivery_id):
        rows = await self.db.execute(
            "SELECT record FROM delivery_log WHERE profile_id = ? AND delivery_id = ?", (profile_id, delivery_id)
        )
        return delivery_pb2.Delivery.FromString(rows[0].record) if rows else None

    async def save_delivery(self, delivery):
        await self.db.execute(
            "INSERT INTO delivery_log (profile_id, delivery_id, record) VALUES (?, ?, ?)",
            (delivery.profile_id, delivery.delivery_id, delivery.SerializeToString()),
        )

    async def deliveries(self, profile_id):
        rows = await self.db.execute("SELECT record FROM delivery_log WHERE profile_id = ? LIMIT 1000", (profile_id,))
        return [delivery_pb2.Delivery.FromString(r.record) for r in rows]



class SqliteDeliveryStore(Repository):
    db: SqliteStore

    async def create_destination(self, destination):
        def work(db) -> bool:
            cursor = db.execute("INSERT OR IGNORE INTO delivery_destinations VALUES (?, ?)",
                                (destination.destination_id, destination.SerializeToString()))
            return cursor.rowcount == 1

        if not await self.db.transaction(work):
            raise AlreadyExists("destination", destination.destination_id)

    async def destinations(self):
        rows = await self.db.execute("SELECT definition FROM delivery_destinations ORDER BY destination_id")
        return [delivery_pb2.Destination.FromString(r[0]) for r in rows]

    async def delivery(self, profile_id, delivery_id):
        rows = await self.db.execute(
            "SELECT record FROM delivery_log WHERE profile_id = ? AND delivery_id = ?", (profile_id, delivery_id)
        )
        return delivery_pb2.Delivery.FromString(rows[0][0]) if rows else None

    async def save_delivery(self, delivery):
        await self.db.execute(
            "INSERT OR REPLACE INTO delivery_log VALUES (?, ?, ?)",
            (delivery.profile_id, delivery.delivery_id, delivery.SerializeToString()),
        )

    async def deliveries(self, profile_id):
        rows = await self.db.execute("SELECT record FROM delivery_log WHERE profile_id = ? ORDER BY delivery_id", (profile_id,))
        return [delivery_pb2.Delivery.FromString(r[0]) for r in rows]



async def open_store(settings) -> DeliveryStore:
    return await open_repository(
        settings, "delivery", cassandra=(CASSANDRA, CassandraDeliveryStore), sqlite=(SQLITE, SqliteDeliveryStore)
    )
