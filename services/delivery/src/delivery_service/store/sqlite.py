"""The delivery store on SQLite (see base.py for what is kept and why)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from delivery_service.store.base import DeliveryStore
from delivery_service.store.model import Campaign, CampaignRun, DeadLetter, Job, due_at, erasure_key
from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform.errors import AlreadyExists
from mosaic.platform.store import Migration, Repository
from mosaic.platform.store.sqlite import SqliteStore

MIGRATIONS = [
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
    Migration(
        4,
        (
            "CREATE TABLE delivery_campaigns (campaign_id TEXT PRIMARY KEY, definition BLOB)",
            "CREATE TABLE delivery_campaign_runs (campaign_id TEXT PRIMARY KEY, version INTEGER, run BLOB)",
            "CREATE TABLE delivery_held (profile_id TEXT, delivery_id TEXT, slot INTEGER, due REAL, job BLOB,"
            " PRIMARY KEY (profile_id, delivery_id))",
            "CREATE INDEX delivery_held_due ON delivery_held (slot, due)",
        ),
    ),
    Migration(5, ("CREATE TABLE delivery_erasures (id_hash TEXT PRIMARY KEY, erased_us INTEGER)",)),
]
# A row the embedded store still holds but whose expiry has passed is not read.
_KEPT = "(expires_us IS NULL OR expires_us > ?)"


def _now_us() -> int:
    return time.time_ns() // 1000


def _expires(ttl: int) -> int | None:
    return _now_us() + ttl * 1_000_000 if ttl else None


class SqliteDeliveryStore(Repository, DeliveryStore):
    db: SqliteStore
    log_ttl = 0
    dead_letter_ttl = 0

    async def create_destination(self, destination: delivery_pb2.Destination) -> None:
        def work(db) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO delivery_destinations VALUES (?, ?)",
                (destination.destination_id, destination.SerializeToString()),
            )
            return cursor.rowcount == 1

        if not await self.db.transaction(work):
            raise AlreadyExists("destination", destination.destination_id)

    async def destinations(self) -> list[delivery_pb2.Destination]:
        rows = await self.db.execute("SELECT definition FROM delivery_destinations ORDER BY destination_id")
        return [delivery_pb2.Destination.FromString(r[0]) for r in rows]

    async def delete_destination(self, destination_id: str) -> None:
        await self.db.execute("DELETE FROM delivery_destinations WHERE destination_id = ?", (destination_id,))

    async def delivery(self, profile_id: str, delivery_id: str) -> delivery_pb2.Delivery | None:
        rows = await self.db.execute(
            f"SELECT record FROM delivery_log WHERE profile_id = ? AND delivery_id = ? AND {_KEPT}",
            (profile_id, delivery_id, _now_us()),
        )
        return delivery_pb2.Delivery.FromString(rows[0][0]) if rows else None

    async def save_delivery(self, delivery: delivery_pb2.Delivery) -> None:
        await self.save_deliveries([delivery])

    async def save_deliveries(self, deliveries: Sequence[delivery_pb2.Delivery]) -> None:
        expires = _expires(self.log_ttl)
        rows = [(d.profile_id, d.delivery_id, d.SerializeToString(), expires) for d in deliveries]
        await self.db.transaction(
            lambda db: db.executemany("INSERT OR REPLACE INTO delivery_log VALUES (?, ?, ?, ?)", rows)
        )

    async def deliveries(self, profile_id: str, after: str = "", limit: int = 0) -> list[delivery_pb2.Delivery]:
        rows = await self.db.execute(
            f"SELECT record FROM delivery_log WHERE profile_id = ? AND delivery_id > ? AND {_KEPT}"
            " ORDER BY delivery_id LIMIT ?",
            (profile_id, after, _now_us(), limit or -1),
        )
        return [delivery_pb2.Delivery.FromString(r[0]) for r in rows]

    async def put_dead_letter(self, letter: DeadLetter) -> None:
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

    async def dead_letter(self, destination_id: str, delivery_id: str) -> DeadLetter | None:
        rows = await self.db.execute(
            f"SELECT letter FROM delivery_dead_letters WHERE destination_id = ? AND delivery_id = ? AND {_KEPT}",
            (destination_id, delivery_id, _now_us()),
        )
        return DeadLetter.FromString(rows[0][0]) if rows else None

    async def dead_letters(self, destination_id: str, after: str, limit: int) -> list[DeadLetter]:
        rows = await self.db.execute(
            f"SELECT letter FROM delivery_dead_letters WHERE destination_id = ? AND delivery_id > ? AND {_KEPT}"
            " ORDER BY delivery_id LIMIT ?",
            (destination_id, after, _now_us(), limit),
        )
        return [DeadLetter.FromString(r[0]) for r in rows]

    async def delete_dead_letter(self, letter: DeadLetter) -> None:
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

    async def create_campaign(self, campaign: Campaign) -> None:
        def work(db) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO delivery_campaigns VALUES (?, ?)",
                (campaign.campaign_id, campaign.SerializeToString()),
            )
            return cursor.rowcount == 1

        if not await self.db.transaction(work):
            raise AlreadyExists("campaign", campaign.campaign_id)

    async def campaigns(self) -> list[Campaign]:
        rows = await self.db.execute("SELECT definition FROM delivery_campaigns ORDER BY campaign_id")
        return [Campaign.FromString(r[0]) for r in rows]

    async def campaign(self, campaign_id: str) -> tuple[Campaign, bytes] | None:
        rows = await self.db.execute("SELECT definition FROM delivery_campaigns WHERE campaign_id = ?", (campaign_id,))
        return (Campaign.FromString(rows[0][0]), bytes(rows[0][0])) if rows else None

    async def replace_campaign(self, campaign: Campaign, token: bytes) -> bool:
        def work(db) -> bool:
            cursor = db.execute(
                "UPDATE delivery_campaigns SET definition = ? WHERE campaign_id = ? AND definition = ?",
                (campaign.SerializeToString(), campaign.campaign_id, token),
            )
            return cursor.rowcount == 1

        return await self.db.transaction(work)

    async def delete_campaign(self, campaign_id: str) -> None:
        def work(db) -> None:
            db.execute("DELETE FROM delivery_campaigns WHERE campaign_id = ?", (campaign_id,))
            db.execute("DELETE FROM delivery_campaign_runs WHERE campaign_id = ?", (campaign_id,))

        await self.db.transaction(work)

    async def campaign_runs(self) -> dict[str, tuple[int, CampaignRun]]:
        rows = await self.db.execute("SELECT campaign_id, version, run FROM delivery_campaign_runs")
        return {r[0]: (r[1], CampaignRun.FromString(r[2])) for r in rows}

    async def save_campaign_run(self, campaign_id: str, run: CampaignRun, version: int) -> bool:
        def work(db) -> bool:
            if version == 0:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO delivery_campaign_runs VALUES (?, 1, ?)",
                    (campaign_id, run.SerializeToString()),
                )
            else:
                cursor = db.execute(
                    "UPDATE delivery_campaign_runs SET version = ?, run = ? WHERE campaign_id = ? AND version = ?",
                    (version + 1, run.SerializeToString(), campaign_id, version),
                )
            return cursor.rowcount == 1

        return await self.db.transaction(work)

    async def hold(self, job: Job, slot: int) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO delivery_held VALUES (?, ?, ?, ?, ?)",
            (job.profile_id, job.delivery_id, slot, due_at(job), job.SerializeToString()),
        )

    async def due_jobs(self, slot: int, now: float, limit: int) -> list[Job]:
        rows = await self.db.execute(
            "SELECT job FROM delivery_held WHERE slot = ? AND due <= ? ORDER BY due LIMIT ?", (slot, now, limit)
        )
        return [Job.FromString(r[0]) for r in rows]

    async def unhold(self, job: Job, slot: int) -> None:
        await self.db.execute(
            "DELETE FROM delivery_held WHERE profile_id = ? AND delivery_id = ?", (job.profile_id, job.delivery_id)
        )

    async def erase_person(self, profile_id: str) -> int:
        def work(db) -> int:
            letters = db.execute(
                "SELECT destination_id, delivery_id FROM delivery_dead_letters_by_profile WHERE profile_id = ?",
                (profile_id,),
            ).fetchall()
            db.executemany("DELETE FROM delivery_dead_letters WHERE destination_id = ? AND delivery_id = ?", letters)
            db.execute("DELETE FROM delivery_dead_letters_by_profile WHERE profile_id = ?", (profile_id,))
            held = db.execute("DELETE FROM delivery_held WHERE profile_id = ?", (profile_id,)).rowcount
            records = db.execute("DELETE FROM delivery_log WHERE profile_id = ?", (profile_id,)).rowcount
            return records + len(letters) + held

        return await self.db.transaction(work)

    async def record_erasure(self, profile_id: str) -> None:
        await self.db.execute(
            "INSERT OR IGNORE INTO delivery_erasures VALUES (?, ?)", (erasure_key(profile_id), _now_us())
        )

    async def erased(self, profile_ids: Sequence[str]) -> set[str]:
        if not profile_ids:
            return set()
        keys = {erasure_key(pid): pid for pid in profile_ids}
        rows = await self.db.execute(
            f"SELECT id_hash FROM delivery_erasures WHERE id_hash IN ({', '.join('?' * len(keys))})", list(keys)
        )
        return {keys[row[0]] for row in rows}

    async def erasures(self, most: int) -> list[str]:
        return [row[0] for row in await self.db.execute("SELECT id_hash FROM delivery_erasures LIMIT ?", (most,))]

    async def sweep(self, now_us: int) -> dict[str, int]:
        """Delete the delivery records and dead letters past their expiry; rows removed by kind."""

        def work(db) -> dict[str, int]:
            expired = "WHERE expires_us IS NOT NULL AND expires_us <= ?"
            records = db.execute(f"DELETE FROM delivery_log {expired}", (now_us,)).rowcount
            letters = db.execute(f"DELETE FROM delivery_dead_letters {expired}", (now_us,)).rowcount
            db.execute(f"DELETE FROM delivery_dead_letters_by_profile {expired}", (now_us,))
            return {"deliveries": records, "dead_letters": letters}

        return await self.db.transaction(work)
