"""Identity resolution per replica, on Cassandra and on the embedded store, with a graph of a
million identifiers already present.

The graph (250,000 people with a user id, an e-mail, an anonymous id and a device id) is
loaded straight into the tables with concurrent prepared inserts (SQLite: one transaction),
as an import into a fresh keyspace before any replica runs, and timed. Then one replica's
EventResolver (what the events.raw handler calls; the bus is left out so the figure is the
graph's) resolves a realistic mix, eight events at a time like eight partitions:

- 80 % known people with identifiers they already have (no lock: reads of claims and root);
- 15 % known people on a new browser (a new anonymous id: lock, claim, members);
- 5 % strangers (a new profile);

then the known people of that mix come back with fresh events, which is the steady state of
a replica whose caches hold its people: claims (they never change) and roots (dropped when a
merge or split touches them). Sightings are written behind as in the service.

Environment: BENCH_IDENTITY_PEOPLE (250000), BENCH_IDENTITY_EVENTS (20000), BENCH_IDENTITY_STORES
(cassandra,embedded).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
import time
import uuid

from mosaic.events.v1 import event_pb2
from mosaic.platform.config import PlatformSettings
from mosaic.testing import cassandra_node

PEOPLE = int(os.environ.get("BENCH_IDENTITY_PEOPLE", "250000"))
EVENTS = int(os.environ.get("BENCH_IDENTITY_EVENTS", "20000"))
STORES = os.environ.get("BENCH_IDENTITY_STORES", "cassandra,embedded").split(",")
CONCURRENCY = 8
T0 = 1_600_000_000_000


def person(p: int) -> list[tuple[str, str]]:
    return [("user_id", f"u{p}"), ("email", f"p{p}@example.com"), ("anonymous_id", f"a{p}"), ("device_id", f"d{p}")]


def profile_of(p: int) -> str:
    return f"profile-{p}"


def load_cassandra(settings) -> None:
    from cassandra.cluster import Cluster
    from cassandra.concurrent import execute_concurrent_with_args

    cluster = Cluster(list(settings.hosts), port=settings.port, protocol_version=5)
    session = cluster.connect()
    ks = settings.keyspace
    claim = session.prepare(
        f"INSERT INTO {ks}.identity_claims (id_type, id_value, profile_id, event_id, claimed_at, source)"
        " VALUES (?, ?, ?, ?, ?, 'import')"
    )
    # A person's four member rows share a partition: one unlogged batch writes them at once.
    member = session.prepare(
        "BEGIN UNLOGGED BATCH "
        + " ".join(
            f"INSERT INTO {ks}.identity_members (profile_id, id_type, id_value, first_seen, event_id, source)"
            " VALUES (?, ?, ?, ?, ?, 'import');"
            for _ in range(4)
        )
        + " APPLY BATCH"
    )
    profile = session.prepare(
        f"INSERT INTO {ks}.identity_profiles (profile_id, created_at, created_by, merged_into,"
        " merge_id, holder, lease_until) VALUES (?, ?, ?, '', '', '', 0)"
    )
    step = 20_000
    for start in range(0, PEOPLE, step):
        people = range(start, min(PEOPLE, start + step))
        claims = [(t, v, profile_of(p), f"import-{p}", T0) for p in people for t, v in person(p)]
        members = [tuple(x for t, v in person(p) for x in (profile_of(p), t, v, T0, f"import-{p}")) for p in people]
        profiles = [(profile_of(p), T0 + p, f"import-{p}") for p in people]
        for statement, rows in ((claim, claims), (member, members), (profile, profiles)):
            results = execute_concurrent_with_args(session, statement, rows, concurrency=256, raise_on_first_error=True)
            assert all(ok for ok, _ in results)
    cluster.shutdown()


def load_sqlite(path) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO identity_claims (id_type, id_value, profile_id, claimed_at, event_id, source, claimed_ms)"
        " VALUES (?, ?, ?, '', ?, 'import', ?)",
        ((t, v, profile_of(p), f"import-{p}", T0) for p in range(PEOPLE) for t, v in person(p)),
    )
    db.executemany(
        "INSERT INTO identity_members VALUES (?, ?, ?, ?, ?, 'import')",
        ((profile_of(p), t, v, T0, f"import-{p}") for p in range(PEOPLE) for t, v in person(p)),
    )
    db.executemany(
        "INSERT INTO identity_profiles (profile_id, created_at, created_by) VALUES (?, ?, ?)",
        ((profile_of(p), T0 + p, f"import-{p}") for p in range(PEOPLE)),
    )
    db.execute("COMMIT")
    db.close()


def workload(rng: random.Random) -> list[event_pb2.Event]:
    events = []
    for n in range(EVENTS):
        roll = rng.random()
        event = event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, event="Viewed", message_id=str(uuid.uuid4()))
        p = rng.randrange(PEOPLE)
        if roll < 0.80:
            event.user_id, event.anonymous_id = f"u{p}", f"a{p}"
            event.context.update({"device": {"id": f"d{p}"}})
        elif roll < 0.95:
            event.user_id, event.anonymous_id = f"u{p}", f"new-{n}"
        else:
            event.anonymous_id = f"stranger-{n}"
            event.traits.update({"email": f"stranger-{n}@example.com"})
        event.timestamp.FromMilliseconds(T0 + 1_000_000 + n)
        events.append(event)
    return events


async def measure(store_name: str, platform: PlatformSettings) -> None:
    from identity_service.app import components
    from identity_service.config import Settings
    from identity_service.store import open_store

    settings = Settings(platform)
    store = await open_store(platform)
    started = time.perf_counter()
    if store_name == "cassandra":
        await asyncio.to_thread(load_cassandra, platform.cassandra)
    else:
        await asyncio.to_thread(load_sqlite, platform.data_dir / "identity.db")
    loaded = time.perf_counter() - started
    print(
        f"{store_name}: loaded {PEOPLE * 4:,} identifiers ({PEOPLE:,} profiles, claims + members + profile rows)"
        f" in {loaded:.1f} s ({PEOPLE * 9 / loaded:,.0f} rows/s)",
        flush=True,
    )

    _, _, events = components(store, settings)
    stopping = asyncio.Event()
    writer = asyncio.create_task(events.sightings.run(stopping))  # as in the service: sightings written behind
    todo = workload(random.Random(7))
    for event in todo[:500]:  # warm-up: connections, prepared statements
        await events.resolve(event)
    await run(store_name, "cold mix", events, todo[500:])
    # The same people come back (fresh events): their claims, which never change, are cached.
    again = []
    for event in todo[500:]:
        if event.context.fields:
            event = event_pb2.Event(
                type=event.type,
                event=event.event,
                message_id=str(uuid.uuid4()),
                user_id=event.user_id,
                anonymous_id=event.anonymous_id,
                context=event.context,
                timestamp=event.timestamp,
            )
            again.append(event)
    await run(store_name, "returning people, claims and roots cached", events, again)
    stopping.set()
    await writer
    await store.close()


async def run(store_name: str, label: str, events, todo: list[event_pb2.Event]) -> None:
    latencies: list[float] = []
    queue = list(reversed(todo))

    async def partition() -> None:
        while queue:
            event = queue.pop()
            begun = time.perf_counter()
            await events.resolve(event)
            latencies.append(time.perf_counter() - begun)

    begun, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(partition() for _ in range(CONCURRENCY)))
    await events.sightings.flush()  # the run's writes behind count in its time
    elapsed, cpu = time.perf_counter() - begun, time.process_time() - cpu
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    print(
        f"{store_name} ({label}): {len(todo):,} events in {elapsed:.1f} s = {len(todo) / elapsed:,.0f} events/s"
        f" per replica ({CONCURRENCY} at a time); latency p50 {p(0.50):.2f} ms, p99 {p(0.99):.2f} ms,"
        f" mean {statistics.fmean(latencies) * 1000:.2f} ms; CPU {cpu / len(todo) * 1e6:,.0f} µs per event",
        flush=True,
    )


async def main() -> None:
    print(
        f"identity: {PEOPLE * 4:,} identifiers present, {EVENTS:,} events (80 % known, 15 % new browser,"
        f" 5 % strangers), {os.cpu_count()} cores",
        flush=True,
    )
    for store_name in STORES:
        if store_name == "cassandra":
            keyspace = cassandra_node.new_keyspace_settings(cassandra_node.ensure_node(), prefix="bench")
            environ = {
                "MOSAIC_AUTH": "off",
                "MOSAIC_STORE": "cassandra",
                "MOSAIC_CASSANDRA_PORT": str(keyspace.port),
                "MOSAIC_CASSANDRA_KEYSPACE": keyspace.keyspace,
            }
            try:
                await measure(store_name, PlatformSettings.from_env("identity", environ))
            finally:
                cassandra_node.drop_keyspace(keyspace)
        else:
            with tempfile.TemporaryDirectory() as folder:
                await measure(
                    store_name, PlatformSettings.from_env("identity", {"MOSAIC_AUTH": "off", "MOSAIC_DATA_DIR": folder})
                )
