"""Profile benchmark (issue 6), on the local Cassandra node and a fresh nats-server.

1. End to end: resolved events in on `events.resolved`, the profile service folds them,
   writes each snapshot to Cassandra and publishes `profile.updated`: updates per second.
2. Snapshot writes (store.save: snapshot, time index, marker, latest) against raw
   cassandra-driver inserts of rows of the same size, at the same concurrency.
3. GetProfile over gRPC from the warm cache: p50 and p99.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import grpc
from cassandra.concurrent import execute_concurrent_with_args

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.platform.config import PlatformSettings
from mosaic.platform.server import Service
from mosaic.profile.v1 import profile_service_pb2 as pb
from mosaic.profile.v1 import profile_service_pb2_grpc
from mosaic.testing import cassandra_node
from mosaic.testing.nats_server import NatsServer
from profile_service.app import build
from profile_service.config import Settings
from profile_service.store import MARKER_TTL, Latest, StoredSnapshot, open_store

EVENTS = int(os.environ.get("BENCH_PROFILE_EVENTS", "4000"))
PROFILES = 400
CONCURRENCY = 64


def resolved(i: int) -> resolved_pb2.ResolvedEvent:
    event = event_pb2.Event(
        type=event_pb2.EVENT_TYPE_TRACK, event="Order Completed", user_id=f"u{i % PROFILES}", message_id=f"bench-{i}"
    )
    event.timestamp.GetCurrentTime()
    event.properties.update({"revenue": i % 97, "sku": f"sku-{i % 13}", "note": "x" * 200})
    return resolved_pb2.ResolvedEvent(profile_id=f"p{i % PROFILES}", event=event)


async def end_to_end(service: Service) -> float:
    assert service.runtime is not None  # started
    bus = service.runtime.bus
    start = time.perf_counter()
    for chunk in range(0, EVENTS, 500):
        await asyncio.gather(
            *(
                bus.publish(topics.EVENTS_RESOLVED, f"p{i % PROFILES}", resolved(i), f"bench-{i}")
                for i in range(chunk, min(EVENTS, chunk + 500))
            )
        )
    while (await bus._js.stream_info(topics.PROFILE_UPDATED.stream)).state.messages < EVENTS:
        await asyncio.sleep(0.05)
    return EVENTS / (time.perf_counter() - start)


async def snapshot_writes(settings: PlatformSettings) -> dict[str, float]:
    """Rows per second: raw driver inserts, snapshot rows through the store, whole changes."""
    store = await open_store(settings)
    latest = await store.latest("p1")
    assert latest is not None  # folded by end_to_end before
    stored = (await store.snapshots("p1", latest.profile.version, latest.profile.version))[0]
    payload = stored.snapshot.SerializeToString()
    n = 6000

    async def run(write) -> float:
        queue = iter(range(n))
        start = time.perf_counter()

        async def worker():
            for i in queue:
                await write(i)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return n / (time.perf_counter() - start)

    session = store.db._session
    ks = settings.cassandra.keyspace
    await asyncio.to_thread(
        session.execute,
        f"CREATE TABLE IF NOT EXISTS {ks}.bench_raw ("
        " profile_id text, bucket bigint, version bigint, snapshot blob, is_full boolean,"
        " PRIMARY KEY ((profile_id, bucket), version))",
    )
    raw_insert = session.prepare(
        f"INSERT INTO {ks}.bench_raw (profile_id, bucket, version, snapshot, is_full) VALUES (?, ?, ?, ?, ?)"
    )

    def raw() -> float:  # the driver's own fastest path, on its own thread
        args = [(f"r{i % 500}", 0, i, payload, True) for i in range(n)]
        start = time.perf_counter()
        execute_concurrent_with_args(session, raw_insert, args, concurrency=CONCURRENCY)
        return n / (time.perf_counter() - start)

    async def snapshot_row(i: int) -> None:
        await store.db.execute(
            "INSERT INTO profile_snapshots (profile_id, bucket, version, snapshot, is_full) VALUES (?, ?, ?, ?, ?)",
            (f"s{i % 500}", 0, i, payload, True),
        )

    async def change(i: int) -> None:
        snapshot = type(stored.snapshot)()
        snapshot.CopyFrom(stored.snapshot)
        snapshot.profile_id = snapshot.profile.profile_id = f"w{i % 500}"
        snapshot.version = snapshot.profile.version = 2 + i // 500
        snapshot.cause_message_id = f"w-{i}"
        await store.save(StoredSnapshot(snapshot, True), Latest(snapshot.profile, latest.aggregates), MARKER_TTL)

    rates = {
        "raw": await asyncio.to_thread(raw),
        "row": await run(snapshot_row),
        "change": await run(change),
        "size": len(payload),
    }
    await store.close()
    return rates


async def get_profile_latency(service: Service) -> tuple[float, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        for i in range(200):
            await stub.GetProfile(pb.GetProfileRequest(profile_id=f"p{i % PROFILES}"))
        samples = []
        for i in range(3000):
            start = time.perf_counter()
            await stub.GetProfile(pb.GetProfileRequest(profile_id=f"p{i % PROFILES}"))
            samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


async def main() -> None:
    nats = NatsServer().start()
    keyspace = cassandra_node.new_keyspace_settings(cassandra_node.ensure_node(), prefix="bench")
    env = {
        "MOSAIC_NATS_URL": nats.url,
        "MOSAIC_AUTH": "off",
        "MOSAIC_STORE": "cassandra",
        "MOSAIC_CASSANDRA_KEYSPACE": keyspace.keyspace,
        "MOSAIC_CASSANDRA_PORT": str(keyspace.port),
        "OTEL_SDK_DISABLED": "true",
    }
    settings = Settings.from_env(env)
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    try:
        rate = await end_to_end(service)
        print(
            f"profile updates end to end (event in, snapshot in Cassandra, profile.updated out): {rate:,.0f}/s"
            f" over {EVENTS} events on {PROFILES} profiles, {settings.platform.partitions} partitions"
        )
        r = await snapshot_writes(settings.platform)
        print(
            f"raw cassandra-driver inserts of {r['size']}-byte rows (execute_concurrent_with_args): {r['raw']:,.0f}/s"
        )
        print(f"snapshot rows written through the store: {r['row']:,.0f}/s ({r['row'] / r['raw']:.0%} of raw)")
        print(
            f"whole changes (snapshot + time index, then marker + state in one batch): {r['change']:,.0f}/s"
            f" ({r['change'] / r['raw']:.0%} of raw; 4 rows each)  [concurrency {CONCURRENCY}]"
        )
        p50, p99 = await get_profile_latency(service)
        print(f"GetProfile from the warm cache over gRPC: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    finally:
        await service.stop()
        nats.close()
        cassandra_node.drop_keyspace(keyspace)
