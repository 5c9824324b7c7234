"""Destinations, campaigns, the delivery log, held jobs and the dead-letter store.

A delivery's id is its idempotency key (destination, trigger, profile, profile version): a
redelivered membership change finds the delivery already decided and queues nothing twice.
Dead letters are kept by destination, in delivery id order, so a page is one range read.
Deliveries and dead letters are kept for their retention (mosaic.platform.retention) from
their last write: a Cassandra TTL, or an expiry column the embedded store's reads respect and
its sweeper deletes by.

A campaign's run is written by compare-and-set on its version (a lightweight transaction on
Cassandra), so one replica at a time claims a tick. Jobs held for quiet hours are kept by
person and by (partition, due time): the sweeper of a partition reads what is due in one range.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from mosaic.delivery.v1 import campaign_pb2, delivery_pb2
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
]
# A row the embedded store still holds but whose expiry has passed is not read.
_KEPT = "(expires_us IS NULL OR expires_us > ?)"
BUCKET_SECONDS = 3600
# How far back a partition's sweeper first looks when it has no mark yet (a new deployment).
FIRST_LOOKBACK_BUCKETS = 7 * 24


def _now_us() -> int:
    return time.time_ns() // 1000


def _expires(ttl: int) -> int | None:
    return _now_us() + ttl * 1_000_000 if ttl else None


DeadLetter = delivery_pb2.DeadLetter
Campaign = campaign_pb2.Campaign
CampaignRun = campaign_pb2.CampaignRun
Job = delivery_pb2.DeliveryJob


def _due(job: Job) -> float:
    return job.not_before.ToNanoseconds() / 1e9


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
    async def create_campaign(self, campaign: Campaign) -> None: ...
    async def campaigns(self) -> list[Campaign]: ...
    async def delete_campaign(self, campaign_id: str) -> None:
        """Delete the campaign and its run."""
        ...

    async def campaign_runs(self) -> dict[str, tuple[int, CampaignRun]]:
        """Every campaign's run and its version."""
        ...

    async def save_campaign_run(self, campaign_id: str, run: CampaignRun, version: int) -> bool:
        """Write the run if its stored version is still `version` (0: none stored yet); whether
        it was written (then its version is `version + 1`)."""
        ...

    async def hold(self, job: Job, slot: int) -> None:
        """Keep a job until its not_before, for the sweeper of partition `slot`."""
        ...

    async def due_jobs(self, slot: int, now: float, limit: int) -> list[Job]:
        """Held jobs of partition `slot` due at `now` (epoch seconds), earliest first."""
        ...

    async def unhold(self, job: Job, slot: int) -> None: ...
    async def erase_person(self, profile_id: str) -> int:
        """Delete the person's delivery log, held jobs and dead letters; how many records went."""
        ...

    async def close(self) -> None: ...


class CassandraDeliveryStore(Repository):
    db: CassandraStore
    log_ttl = 0  # seconds a delivery record is kept (0: for good); set by open_store
    dead_letter_ttl = 0

    def __init__(self, db) -> None:
        super().__init__(db)
        self._marks: dict[int, int] = {}  # per partition, the first hour that may still hold jobs

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

    async def create_campaign(self, campaign):
        applied, _ = await self.db.execute_lwt(
            "INSERT INTO delivery_campaigns (campaign_id, definition) VALUES (?, ?) IF NOT EXISTS",
            (campaign.campaign_id, campaign.SerializeToString()),
        )
        if not applied:
            raise AlreadyExists("campaign", campaign.campaign_id)

    async def campaigns(self):
        rows = await self.db.execute("SELECT definition FROM delivery_campaigns LIMIT 10000")
        return sorted((Campaign.FromString(r.definition) for r in rows), key=lambda c: c.campaign_id)

    async def delete_campaign(self, campaign_id):
        await self.db.execute("DELETE FROM delivery_campaigns WHERE campaign_id = ?", (campaign_id,))
        # Its run is only ever written by compare-and-set: deleted the same way.
        await self.db.execute_lwt("DELETE FROM delivery_campaign_runs WHERE campaign_id = ? IF EXISTS", (campaign_id,))

    async def campaign_runs(self):
        rows = await self.db.execute("SELECT campaign_id, version, run FROM delivery_campaign_runs LIMIT 10000")
        return {r.campaign_id: (r.version, CampaignRun.FromString(r.run)) for r in rows}

    async def save_campaign_run(self, campaign_id, run, version):
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

    async def hold(self, job, slot):
        due = _due(job)
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

    async def due_jobs(self, slot, now, limit):
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

    async def unhold(self, job, slot):
        due = _due(job)
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

    async def create_campaign(self, campaign):
        def work(db) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO delivery_campaigns VALUES (?, ?)",
                (campaign.campaign_id, campaign.SerializeToString()),
            )
            return cursor.rowcount == 1

        if not await self.db.transaction(work):
            raise AlreadyExists("campaign", campaign.campaign_id)

    async def campaigns(self):
        rows = await self.db.execute("SELECT definition FROM delivery_campaigns ORDER BY campaign_id")
        return [Campaign.FromString(r[0]) for r in rows]

    async def delete_campaign(self, campaign_id):
        def work(db) -> None:
            db.execute("DELETE FROM delivery_campaigns WHERE campaign_id = ?", (campaign_id,))
            db.execute("DELETE FROM delivery_campaign_runs WHERE campaign_id = ?", (campaign_id,))

        await self.db.transaction(work)

    async def campaign_runs(self):
        rows = await self.db.execute("SELECT campaign_id, version, run FROM delivery_campaign_runs")
        return {r[0]: (r[1], CampaignRun.FromString(r[2])) for r in rows}

    async def save_campaign_run(self, campaign_id, run, version):
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

    async def hold(self, job, slot):
        await self.db.execute(
            "INSERT OR REPLACE INTO delivery_held VALUES (?, ?, ?, ?, ?)",
            (job.profile_id, job.delivery_id, slot, _due(job), job.SerializeToString()),
        )

    async def due_jobs(self, slot, now, limit):
        rows = await self.db.execute(
            "SELECT job FROM delivery_held WHERE slot = ? AND due <= ? ORDER BY due LIMIT ?", (slot, now, limit)
        )
        return [Job.FromString(r[0]) for r in rows]

    async def unhold(self, job, slot):
        await self.db.execute(
            "DELETE FROM delivery_held WHERE profile_id = ? AND delivery_id = ?", (job.profile_id, job.delivery_id)
        )

    async def erase_person(self, profile_id):
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
