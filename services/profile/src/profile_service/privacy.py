"""The profile service's part in privacy requests (mosaic.platform.privacy): a person's
profiles, snapshot histories, archived events and identifier index, exported or erased.

The person's profiles are those the request names (consent follows merges) and those their
records point to (a merged profile's survivor). Erasure works on the store's tables directly,
one backend each, under the profile's lock, so an event being folded cannot write the profile
back halfway; the cache forgets the profile. A tombstone (a hash of the profile id) is kept
first and for good, so an event, consent notice or merge that reaches the profile service after
the erasure (past ingestion already, or resolved by identity before its own part) creates
nothing (see Profiles.apply_batch, ConsentChanges, MergeHandler). Cassandra's partitions are found from what the
profile records: snapshot buckets up to its version, time-index months from its first month,
archive days from its first event (first_seen) to today.

An export gives what is stored, withholding nothing by purpose: it is the person's right of
access (GDPR Art. 15), which covers every datum kept about them and the purposes it is kept for
(each trait's purpose is marked).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from google.protobuf import json_format

from mosaic.events.v1 import privacy_request_pb2, resolved_pb2
from mosaic.platform.privacy import Answer
from mosaic.platform.store.cassandra import CassandraStore
from profile_service.profiles import Profiles
from profile_service.store import BUCKET, month_of

DAY_US = 86_400 * 1_000_000


def _dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class ProfilePrivacy:
    def __init__(self, profiles: Profiles) -> None:
        self.profiles = profiles
        self.store = profiles.store

    async def _profile_ids(self, request: privacy_request_pb2.PrivacyRequested) -> list[str]:
        ids = dict.fromkeys(p for p in [request.person_id, *request.profile_ids] if p)
        for profile_id in list(ids):
            latest = await self.store.latest(profile_id)
            if latest is not None and latest.merged_into:
                ids.setdefault(latest.merged_into)
        return list(ids)

    async def export(self, request: privacy_request_pb2.PrivacyRequested) -> Answer:
        document: dict[str, list] = {"profiles": [], "snapshots": [], "events": []}
        for profile_id in await self._profile_ids(request):
            latest = await self.store.latest(profile_id)
            if latest is None:
                continue
            # The person's own copy is whole (a purpose they withhold still names data kept
            # about them), and says what each trait is kept for.
            self.profiles.purposes.label(latest.profile)
            document["profiles"].append({**_dict(latest.profile), "merged_into": latest.merged_into})
            version = latest.profile.version
            document["snapshots"] += [_dict(s.snapshot) for s in await self.store.snapshots(profile_id, 0, version)]
            since, until = _archive_span(latest.profile)
            document["events"] += [_dict(e) for e in await self.store.events(profile_id, since, until, 1_000_000)]
        return Answer({kind: len(items) for kind, items in document.items()}, document)

    async def erase(self, request: privacy_request_pb2.PrivacyRequested) -> Answer:
        counts: dict[str, int] = {}
        for profile_id in await self._profile_ids(request):
            async with self.profiles.lock(profile_id):
                # First the tombstone: whatever arrives for the profile from now on is dropped.
                await self.store.record_erasure(profile_id)
                if isinstance(self.store.db, CassandraStore):
                    done = await self._erase_cassandra(profile_id)
                else:
                    done = await self._erase_sqlite(profile_id)
                self.profiles.cache.discard(profile_id)
            for table, count in done.items():
                counts[table] = counts.get(table, 0) + count
        return Answer(counts)

    async def _erase_sqlite(self, profile_id: str) -> dict[str, int]:
        tables = (
            "profile_latest",
            "profile_snapshots",
            "profile_applied_events",
            "profile_identifiers",
            "profile_events",
        )

        def work(db) -> dict[str, int]:
            return {t: db.execute(f"DELETE FROM {t} WHERE profile_id = ?", (profile_id,)).rowcount for t in tables}

        return await self.store.db.transaction(work)

    async def _erase_cassandra(self, profile_id: str) -> dict[str, int]:
        db: CassandraStore = self.store.db
        heads = await db.execute(
            "SELECT state, first_month FROM profile_heads WHERE profile_id = ? LIMIT 1", (profile_id,)
        )
        latest = await self.store.latest(profile_id)
        if not heads and latest is None:
            return {}
        counts = {"profile_heads": 1, "profile_snapshots": 0, "profile_events": 0, "profile_identifiers": 0}
        version = latest.profile.version if latest else 0
        statements: list[tuple[str, tuple]] = []
        for bucket in range(version // BUCKET + 1):
            rows = await db.execute(
                "SELECT version FROM profile_snapshots WHERE profile_id = ? AND bucket = ?", (profile_id, bucket)
            )
            counts["profile_snapshots"] += len(rows)
            statements.append(
                ("DELETE FROM profile_snapshots WHERE profile_id = ? AND bucket = ?", (profile_id, bucket))
            )
        today = datetime.now(timezone.utc)
        first_month = heads[0].first_month if heads and heads[0].first_month else month_of(int(today.timestamp() * 1e6))
        for month in _months(first_month, month_of(int(today.timestamp() * 1e6))):
            statements.append(
                ("DELETE FROM profile_snapshot_times WHERE profile_id = ? AND month = ?", (profile_id, month))
            )
        identifiers: set[tuple[str, str]] = set()
        if latest is not None:
            identifiers.update((i.type, i.value) for i in latest.profile.identities.values())
            since, until = _archive_span(latest.profile)
            first_day = datetime.fromtimestamp(since / 1e6, tz=timezone.utc).date()
            last_day = datetime.fromtimestamp(until / 1e6, tz=timezone.utc).date()
            days = [
                (first_day + timedelta(days=n)).strftime("%Y-%m-%d") for n in range((last_day - first_day).days + 1)
            ]
            for start in range(0, len(days), 20):  # a few reads at a time: a long life is many days
                chunk = days[start : start + 20]
                found = await asyncio.gather(
                    *(
                        db.execute(
                            "SELECT event FROM profile_events WHERE profile_id = ? AND day = ?", (profile_id, key)
                        )
                        for key in chunk
                    )
                )
                for key, rows in zip(chunk, found, strict=False):
                    if not rows:
                        continue
                    counts["profile_events"] += len(rows)
                    for row in rows:  # the identifiers an event was resolved by are indexed too
                        resolved = resolved_pb2.ResolvedEvent.FromString(row.event)
                        identifiers.update((i.type, i.value) for i in resolved.identifiers)
                    statements.append(
                        ("DELETE FROM profile_events WHERE profile_id = ? AND day = ?", (profile_id, key))
                    )
        for id_type, id_value in sorted(identifiers):
            owner = await self.store.profile_of(id_type, id_value)
            if owner == profile_id:
                counts["profile_identifiers"] += 1
                statements.append(
                    ("DELETE FROM profile_identifiers WHERE id_type = ? AND id_value = ?", (id_type, id_value))
                )
        statements.append(("DELETE FROM profile_heads WHERE profile_id = ?", (profile_id,)))
        for start in range(0, len(statements), 20):
            await asyncio.gather(*(db.execute(cql, params) for cql, params in statements[start : start + 20]))
        return counts


def _archive_span(profile) -> tuple[int, int]:
    """The times the archive may hold events of a profile at: its first event to tomorrow (the
    archive reads day by day in Cassandra, so the span must be the profile's, not all time)."""
    now = int(datetime.now(timezone.utc).timestamp() * 1e6)
    first = profile.first_seen.ToMicroseconds() if profile.HasField("first_seen") else now
    last = profile.last_seen.ToMicroseconds() if profile.HasField("last_seen") else now
    return min(first, now) - DAY_US, max(last, now) + DAY_US


def _months(first: str, last: str) -> list[str]:
    months = []
    year, month = int(first[:4]), int(first[5:])
    while f"{year}-{month:02d}" <= last:
        months.append(f"{year}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months
