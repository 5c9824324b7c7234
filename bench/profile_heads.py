"""What profile's read of a fetched batch's heads costs on the embedded store (issue 19).

Before folding a batch, profile reads in one go the latest state of each of its people and which
of its events were already applied (`SqliteProfileStore.heads`: the markers left by earlier
deliveries, so a redelivered event is not folded twice). Here the real store holds BENCH_PEOPLE
people with a few applied events each (written by the checkpoint bench's `Writer`); batches of
256 events of people drawn at random, one in ten a redelivery of an applied event, are read back,
and the process CPU per event is printed: the best round and the median.
Run: `uv run --frozen python -m bench profile_heads`.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.sqlite_checkpoint import Writer
from mosaic.platform.store.sqlite import SqliteStore
from profile_service.store.sqlite import MIGRATIONS, SqliteProfileStore

PEOPLE = int(os.environ.get("BENCH_PEOPLE", "50000"))
HISTORY = 3  # applied events a person has
BATCH = 256
ROUND = 25_600  # events a round
ROUNDS = 7


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        db = SqliteStore(Path(directory) / "profile.db")
        await db.open(MIGRATIONS)
        store = SqliteProfileStore(db)
        writer = Writer(store, [str(uuid.uuid4()) for _ in range(PEOPLE)], 1)
        applied: dict[str, list[str]] = {}
        for _ in range(HISTORY):
            for start in range(0, PEOPLE, 500):
                changes = writer.changes(writer.people[start : start + 500])
                await store.save_changes(changes, 86400)
                for change in changes:
                    applied.setdefault(change.latest.profile.profile_id, []).append(
                        change.snapshots[0].snapshot.cause_message_id
                    )
        draw = random.Random(2)
        rounds, found = [], 0
        for _ in range(ROUNDS):
            batches = []
            for _ in range(ROUND // BATCH):
                wanted: dict[str, list[str]] = {}
                for person in draw.choices(writer.people, k=BATCH):
                    again = draw.random() < 0.1
                    wanted.setdefault(person, []).append(draw.choice(applied[person]) if again else str(uuid.uuid4()))
                batches.append(wanted)
            started = time.process_time()
            for wanted in batches:
                found += len((await store.heads(wanted))[1])
            rounds.append((time.process_time() - started) / ROUND * 1e6)
        await store.close()
    print(
        f"heads of a batch: {min(rounds):.1f} µs of CPU an event at best, median {statistics.median(rounds):.1f} µs"
        f" ({PEOPLE:,} people with {HISTORY} applied events each, batches of {BATCH}, {found:,} redeliveries found)",
        flush=True,
    )
