"""The delivery store on Cassandra (see base.py for what is kept and why)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timezone

from delivery_service.store.base import DeliveryStore
from delivery_service.store.model import Campaign, CampaignRun, DeadLetter, Job, due_at, erasure_key
from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform.errors import AlreadyExists
from mosaic.platform.store import Migration, Repository
from mosaic.platform.store.cassandra import CassandraStore

MIGRATIONS = [
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
    Migration(
        3,
        (
            "CREATE TABLE IF NOT EXISTS delivery_campaigns (campaign_id text PRIMARY KEY, definition blob)",
            "CREATE TABLE IF NOT EXISTS delivery_campaign_runs (campaign_id text PRIMARY KEY, version int, run blob)",
            # Held jobs by person (for erasure) and by partition and hour of their due time (for
            # the sweeper); the marks say from which hour on a partition may still hold some.
            "CREATE TABLE IF NOT EXISTS delivery_held ("
            " profile_id text, delivery_id text, slot int, bucket bigint, due double, job blob,"
            " PRIMARY KEY ((profile_id), delivery_id))",
            "CREATE TABLE IF NOT EXISTS delivery_due ("
            " slot int, bucket bigint, due double, profile_id text, delivery_id text,"
            " PRIMARY KEY ((slot, bucket), due, profile_id, delivery_id))",
            "CREATE TABLE IF NOT EXISTS delivery_due_marks (slot int PRIMARY KEY, bucket bigint)",
        ),
    ),
    Migration(4, ("CREATE TABLE IF NOT EXISTS delivery_erasures (id_hash text PRIMARY KEY, erased_at timestamp)",)),
]


BUCKET_SECONDS = 3600
# How far back a partition's sweeper first looks when it has no mark yet (a new deployment).
FIRST_LOOKBACK_BUCKETS = 7 * 24


class CassandraDeliveryStore(Repository, DeliveryStore):
    db: CassandraStore
    log_ttl = 0  # seconds a delivery record is kept (0: for good); set by open_store
    dead_letter_ttl = 0

    def __init__(self, db: CassandraStore) -> None:
        super().__init__(db)
        self._marks: dict[int, int] = {}  # per partition, the first hour that may still hold jobs

    async def create_destination(self, destination: delivery_pb2.Destination) -> None:
        applied, _ = await self.db.execute_lwt(
            "INSERT INTO delivery_destinations (destination_id, definition) VALUES (?, ?) IF NOT EXISTS",
            (destination.destination_id, destination.SerializeToString()),
        )
        if not applied:
            raise AlreadyExists("destination", destination.destination_id)

    async def destinations(self) -> list[delivery_pb2.Destination]:
        rows = await self.db.execute("SELECT definition FROM delivery_destinations LIMIT 10000")
        return sorted((delivery_pb2.Destination.FromString(r.definition) for r in rows), key=lambda d: d.destination_id)

    async def delete_destination(self, destination_id: str) -> None:
        await self.db.execute("DELETE FROM delivery_destinations WHERE destination_id = ?", (destination_id,))

    async def delivery(self, profile_id: str, delivery_id: str) -> delivery_pb2.Delivery | None:
        rows = await self.db.execute(
            "SELECT record FROM delivery_log WHERE profile_id = ? AND delivery_id = ?", (profile_id, delivery_id)
        )
        return delivery_pb2.Delivery.FromString(rows[0].record) if rows else None

    async def save_delivery(self, delivery: delivery_pb2.Delivery) -> None:
        await self.save_deliveries([delivery])

    async def save_deliveries(self, deliveries: Sequence[delivery_pb2.Delivery]) -> None:
        # One request per chunk: the records are of different people (partitions), so the
        # batch is only a saved round trip, bounded to stay under the node's batch warning.
        statement = "INSERT INTO delivery_log (profile_id, delivery_id, record) VALUES (?, ?, ?) USING TTL ?"
        for start in range(0, len(deliveries), 10):
            chunk = deliveries[start : start + 10]
            await self.db.execute_together(
                [(statement, (d.profile_id, d.delivery_id, d.SerializeToString(), self.log_ttl)) for d in chunk]
            )

    async def deliveries(self, profile_id: str, after: str = "", limit: int = 0) -> list[delivery_pb2.Delivery]:
        rows = await self.db.execute(
            "SELECT record FROM delivery_log WHERE profile_id = ? AND delivery_id > ? LIMIT ?",
            (profile_id, after, limit or 1000),
        )
        return [delivery_pb2.Delivery.FromString(r.record) for r in rows]

    async def put_dead_letter(self, letter: DeadLetter) -> None:
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

    async def dead_letter(self, destination_id: str, delivery_id: str) -> DeadLetter | None:
        rows = await self.db.execute(
            "SELECT letter FROM delivery_dead_letters WHERE destination_id = ? AND delivery_id = ?",
            (destination_id, delivery_id),
        )
        return DeadLetter.FromString(rows[0].letter) if rows else None

    async def dead_letters(self, destination_id: str, after: str, limit: int) -> list[DeadLetter]:
        rows = await self.db.execute(
            "SELECT letter FROM delivery_dead_letters WHERE destination_id = ? AND delivery_id > ? LIMIT ?",
            (destination_id, after, limit),
        )
        return [DeadLetter.FromString(r.letter) for r in rows]

    async def delete_dead_letter(self, letter: DeadLetter) -> None:
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

    async def create_campaign(self, campaign: Campaign) -> None:
        applied, _ = await self.db.execute_lwt(
            "INSERT INTO delivery_campaigns (campaign_id, definition) VALUES (?, ?) IF NOT EXISTS",
            (campaign.campaign_id, campaign.SerializeToString()),
        )
        if not applied:
            raise AlreadyExists("campaign", campaign.campaign_id)

    async def campaigns(self) -> list[Campaign]:
        rows = await self.db.execute("SELECT definition FROM delivery_campaigns LIMIT 10000")
        return sorted((Campaign.FromString(r.definition) for r in rows), key=lambda c: c.campaign_id)

    async def campaign(self, campaign_id: str) -> tuple[Campaign, bytes] | None:
        rows = await self.db.execute("SELECT definition FROM delivery_campaigns WHERE campaign_id = ?", (campaign_id,))
        return (Campaign.FromString(rows[0].definition), bytes(rows[0].definition)) if rows else None

    async def replace_campaign(self, campaign: Campaign, token: bytes) -> bool:
        # A condition on the definition itself: no version column to add, and an UPDATE ... IF
        # on a row deleted meanwhile does not apply (nor bring it back).
        applied, _ = await self.db.execute_lwt(
            "UPDATE delivery_campaigns SET definition = ? WHERE campaign_id = ? IF definition = ?",
            (campaign.SerializeToString(), campaign.campaign_id, token),
        )
        return applied

    async def delete_campaign(self, campaign_id: str) -> None:
        # Both are written by compare-and-set (definition and run): deleted the same way.
        await self.db.execute_lwt("DELETE FROM delivery_campaigns WHERE campaign_id = ? IF EXISTS", (campaign_id,))
        await self.db.execute_lwt("DELETE FROM delivery_campaign_runs WHERE campaign_id = ? IF EXISTS", (campaign_id,))

    async def campaign_runs(self) -> dict[str, tuple[int, CampaignRun]]:
        rows = await self.db.execute("SELECT campaign_id, version, run FROM delivery_campaign_runs LIMIT 10000")
        return {r.campaign_id: (r.version, CampaignRun.FromString(r.run)) for r in rows}

    async def save_campaign_run(self, campaign_id: str, run: CampaignRun, version: int) -> bool:
        if version == 0:
            applied, _ = await self.db.execute_lwt(
                "INSERT INTO delivery_campaign_runs (campaign_id, version, run) VALUES (?, 1, ?) IF NOT EXISTS",
                (campaign_id, run.SerializeToString()),
            )
        else:
            applied, _ = await self.db.execute_lwt(
                "UPDATE delivery_campaign_runs SET version = ?, run = ? WHERE campaign_id = ? IF version = ?",
                (version + 1, run.SerializeToString(), campaign_id, version),
            )
        return applied

    async def hold(self, job: Job, slot: int) -> None:
        due = due_at(job)
        bucket = int(due // BUCKET_SECONDS)
        await self.db.execute_atomic(
            [
                (
                    "INSERT INTO delivery_held (profile_id, delivery_id, slot, bucket, due, job) VALUES (?, ?, ?, ?, ?, ?)",
                    (job.profile_id, job.delivery_id, slot, bucket, due, job.SerializeToString()),
                ),
                (
                    "INSERT INTO delivery_due (slot, bucket, due, profile_id, delivery_id) VALUES (?, ?, ?, ?, ?)",
                    (slot, bucket, due, job.profile_id, job.delivery_id),
                ),
            ]
        )

    async def due_jobs(self, slot: int, now: float, limit: int) -> list[Job]:
        mark = await self._mark(slot, now)
        current = int(now // BUCKET_SECONDS)
        found: list[Job] = []
        for bucket in range(mark, current + 1):
            rows = await self.db.execute(
                "SELECT due, profile_id, delivery_id FROM delivery_due WHERE slot = ? AND bucket = ? AND due <= ?"
                " LIMIT ?",
                (slot, bucket, now, limit - len(found)),
            )
            # An hour that is over and empty never fills again (jobs are held until later than
            # when they are held): the mark moves past it, an hour behind, for clocks that differ.
            if not rows and bucket == mark and bucket < current - 1:
                mark = bucket + 1
                await self.db.execute("UPDATE delivery_due_marks SET bucket = ? WHERE slot = ?", (mark, slot))
                self._marks[slot] = mark
            for r in rows:
                held = await self.db.execute(
                    "SELECT job FROM delivery_held WHERE profile_id = ? AND delivery_id = ?",
                    (r.profile_id, r.delivery_id),
                )
                if held:
                    found.append(Job.FromString(held[0].job))
                else:  # its person was erased
                    await self.db.execute(
                        "DELETE FROM delivery_due WHERE slot = ? AND bucket = ? AND due = ? AND profile_id = ?"
                        " AND delivery_id = ?",
                        (slot, bucket, r.due, r.profile_id, r.delivery_id),
                    )
            if len(found) >= limit:
                break
        return found

    async def _mark(self, slot: int, now: float) -> int:
        if slot not in self._marks:
            rows = await self.db.execute("SELECT bucket FROM delivery_due_marks WHERE slot = ?", (slot,))
            self._marks[slot] = rows[0].bucket if rows else int(now // BUCKET_SECONDS) - FIRST_LOOKBACK_BUCKETS
        return self._marks[slot]

    async def unhold(self, job: Job, slot: int) -> None:
        due = due_at(job)
        await self.db.execute_atomic(
            [
                (
                    "DELETE FROM delivery_due WHERE slot = ? AND bucket = ? AND due = ? AND profile_id = ? AND delivery_id = ?",
                    (slot, int(due // BUCKET_SECONDS), due, job.profile_id, job.delivery_id),
                ),
                (
                    "DELETE FROM delivery_held WHERE profile_id = ? AND delivery_id = ?",
                    (job.profile_id, job.delivery_id),
                ),
            ]
        )

    async def erase_person(self, profile_id: str) -> int:
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
        held = await self.db.execute(
            "SELECT delivery_id, slot, bucket, due FROM delivery_held WHERE profile_id = ? LIMIT 10000", (profile_id,)
        )
        for r in held:
            await self.db.execute(
                "DELETE FROM delivery_due WHERE slot = ? AND bucket = ? AND due = ? AND profile_id = ? AND delivery_id = ?",
                (r.slot, r.bucket, r.due, profile_id, r.delivery_id),
            )
        await self.db.execute_together(
            [
                ("DELETE FROM delivery_dead_letters_by_profile WHERE profile_id = ?", (profile_id,)),
                ("DELETE FROM delivery_held WHERE profile_id = ?", (profile_id,)),
                ("DELETE FROM delivery_log WHERE profile_id = ?", (profile_id,)),
            ]
        )
        return len(records) + len(letters) + len(held)

    async def record_erasure(self, profile_id: str) -> None:
        await self.db.execute(
            "INSERT INTO delivery_erasures (id_hash, erased_at) VALUES (?, ?)",
            (erasure_key(profile_id), datetime.now(timezone.utc)),
        )

    async def erased(self, profile_ids: Sequence[str]) -> set[str]:
        keys = {erasure_key(pid): pid for pid in profile_ids}
        found = await asyncio.gather(
            *(self.db.execute("SELECT id_hash FROM delivery_erasures WHERE id_hash = ?", (key,)) for key in keys)
        )
        return {keys[rows[0].id_hash] for rows in found if rows}

    async def erasures(self, most: int) -> list[str]:
        # Paged by token, 5,000 rows a read: the table is as long as erasures are many.
        found: list[str] = []
        after = -(2**63)
        while len(found) < most:
            rows = await self.db.execute(
                "SELECT id_hash, token(id_hash) AS t FROM delivery_erasures WHERE token(id_hash) > ? LIMIT 5000",
                (after,),
            )
            found += [r.id_hash for r in rows]
            if len(rows) < 5000:
                break
            after = rows[-1].t
        return found[:most]
