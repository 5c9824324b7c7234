"""What the WAL's checkpoint interval costs the embedded store's batched writes (issue 19).

Profile writes a fetched batch in one transaction (`SqliteProfileStore.save_changes`): per event
an archived event, a snapshot (with its time and expiry indexes), an applied-event marker and the
latest state, each landing on a random page of its B-tree. A WAL checkpoint copies every page
the WAL holds back into the database, however often it was written since; the interval decides
how many times a hot page (an interior node, the end of an append-only index) is copied. Here
the real store writes batches of 64 events of BENCH_PEOPLE people (a 1.5 KB profile, a 400 B
snapshot and a 300 B event each, as the pipeline's), once with SQLite's default interval of
1,000 pages and once with the store's (`WAL_CHECKPOINT_PAGES`), in alternating rounds, and prints
the process CPU per event of each: the best round (this machine's speed moves from minute to
minute) and the median.
Run: `uv run --frozen python -m bench sqlite_checkpoint`.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform.store.sqlite import WAL_CHECKPOINT_PAGES, SqliteStore
from mosaic.profile.v1 import profile_pb2
from profile_service.store.model import Change, Latest, StoredSnapshot
from profile_service.store.sqlite import MIGRATIONS, SqliteProfileStore

PEOPLE = int(os.environ.get("BENCH_PEOPLE", "50000"))
BATCH = 64
ROUND = 10_000  # events a round
ROUNDS = 5


class Writer:
    def __init__(self, store: SqliteProfileStore, people: list[str], seed: int) -> None:
        self.store = store
        self.people = people
        self.versions: dict[str, int] = {}
        self.random = random.Random(seed)

    def changes(self, people: list[str]) -> list[Change]:
        changes = []
        for profile_id in people:
            version = self.versions[profile_id] = self.versions.get(profile_id, 0) + 1
            event = event_pb2.Event(
                message_id=str(uuid.uuid4()), type=event_pb2.EVENT_TYPE_TRACK, event="Product Viewed"
            )
            event.timestamp.GetCurrentTime()
            event.properties.update({"blob": os.urandom(150).hex()})
            profile = profile_pb2.Profile(profile_id=profile_id, version=version)
            profile.computed_traits["blob"].string_value = os.urandom(700).hex()
            snapshot = profile_pb2.Snapshot(profile_id=profile_id, version=version, cause_message_id=event.message_id)
            snapshot.recorded_at.GetCurrentTime()
            snapshot.changes.add(path="blob").new_value.string_value = os.urandom(190).hex()
            resolved = resolved_pb2.ResolvedEvent(profile_id=profile_id, event=event)
            changes.append(
                Change(Latest(profile), [StoredSnapshot(snapshot, False)], archived=[(resolved, event.event)])
            )
        return changes

    async def round(self) -> float:
        batches = [self.changes(self.random.choices(self.people, k=BATCH)) for _ in range(ROUND // BATCH)]
        started = time.process_time()
        for changes in batches:
            await self.store.save_changes(changes, 86400)
        return (time.process_time() - started) / (len(batches) * BATCH) * 1e6


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        writers = {}
        for pages in (1000, WAL_CHECKPOINT_PAGES):
            db = SqliteStore(Path(directory) / f"profile-{pages}.db")
            await db.open(MIGRATIONS)
            await db.execute(f"PRAGMA wal_autocheckpoint={pages}")
            writer = writers[pages] = Writer(SqliteProfileStore(db), [str(uuid.uuid4()) for _ in range(PEOPLE)], 1)
            for start in range(0, PEOPLE, 500):  # everyone once: a store of PEOPLE profiles
                await writer.store.save_changes(writer.changes(writer.people[start : start + 500]), 86400)
        figures: dict[int, list[float]] = {pages: [] for pages in writers}
        for _ in range(ROUNDS):
            for pages, writer in writers.items():
                figures[pages].append(await writer.round())
        for pages, rounds in figures.items():
            print(
                f"checkpoint every {pages:,} pages: {min(rounds):.1f} µs of CPU an event at best, median"
                f" {statistics.median(rounds):.1f} µs ({PEOPLE:,} people, batches of {BATCH})",
                flush=True,
            )
        for writer in writers.values():
            await writer.store.close()
