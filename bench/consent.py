"""Consent benchmark (issue 15): CheckConsent p50 and p99 under load.

The consent service runs as its own process (embedded store, a fresh nats-server); this
process is the load, over one gRPC channel, about PEOPLE people, while a writer records
WRITES decisions a second (each a `consent.changed` notice that drops cached answers):

1. open loop: calls started at a fixed RATE per second for SECONDS, whatever the answers'
   speed, so the latency is a caller's at that load and not the queue of a saturated loop;
2. closed loop: CONCURRENCY callers back to back, for the most calls per second;
3. grpc's own Health/Check on the same server at the same rate, as a baseline;
4. the handler's own time on a cache hit, in-process without gRPC;
5. the time the profile service takes to erase a person with ERASE_EVENTS archived events
   (over 100 days) and ERASE_SNAPSHOTS snapshots, on each store (Cassandra: this checkout's
   node, or the one listening on BENCH_CASSANDRA_PORT).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import _process
from mosaic.consent.v1 import consent_pb2, consent_service_pb2_grpc
from mosaic.consent.v1 import consent_service_pb2 as pb
from mosaic.testing.nats_server import NatsServer

PEOPLE = int(os.environ.get("BENCH_CONSENT_PEOPLE", "2000"))
SECONDS = float(os.environ.get("BENCH_CONSENT_SECONDS", "10"))
CONCURRENCY = int(os.environ.get("BENCH_CONSENT_CONCURRENCY", "16"))
RATE = float(os.environ.get("BENCH_CONSENT_RATE", "500"))
WRITES = float(os.environ.get("BENCH_CONSENT_WRITES", "50"))  # SetConsent per second during the load
ERASE_EVENTS = int(os.environ.get("BENCH_CONSENT_ERASE_EVENTS", "10000"))
ERASE_SNAPSHOTS = int(os.environ.get("BENCH_CONSENT_ERASE_SNAPSHOTS", "1000"))


def percentile(samples: list[float], share: float) -> float:
    return samples[min(len(samples) - 1, int(len(samples) * share))]


async def load(stub, open_loop: bool) -> tuple[list[float], int]:
    samples: list[float] = []
    writes = 0
    stop = time.monotonic() + SECONDS

    async def one(pid: str) -> None:
        start = time.perf_counter()
        await stub.CheckConsent(pb.CheckConsentRequest(profile_id=pid, purpose="marketing"))
        samples.append((time.perf_counter() - start) * 1000)

    async def paced() -> None:
        rng = random.Random(1)
        calls = []
        began = time.monotonic()
        n = 0
        while (now := time.monotonic()) < stop:
            due = began + n / RATE
            if due > now:
                await asyncio.sleep(due - now)
            calls.append(asyncio.ensure_future(one(f"p{rng.randrange(PEOPLE)}")))
            n += 1
        await asyncio.gather(*calls)

    async def caller(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            request = pb.CheckConsentRequest(profile_id=f"p{rng.randrange(PEOPLE)}", purpose="marketing")
            start = time.perf_counter()
            await stub.CheckConsent(request)
            samples.append((time.perf_counter() - start) * 1000)

    async def writer() -> None:
        nonlocal writes
        rng = random.Random(7)
        while WRITES and time.monotonic() < stop:
            await stub.SetConsent(
                pb.SetConsentRequest(
                    decision=consent_pb2.ConsentDecision(
                        profile_id=f"p{rng.randrange(PEOPLE)}", purpose="marketing", granted=rng.random() < 0.5
                    )
                )
            )
            writes += 1
            await asyncio.sleep(1 / WRITES)

    if open_loop:
        await asyncio.gather(writer(), paced())
    else:
        await asyncio.gather(writer(), *(caller(i) for i in range(CONCURRENCY)))
    return samples, writes


async def health_baseline(channel: grpc.aio.Channel) -> tuple[float, float]:
    """grpc's own Health/Check on the same server at the same RATE: what gRPC and this machine
    cost with no consent code at all, to read CheckConsent's figures against."""
    health = health_pb2_grpc.HealthStub(channel)
    samples: list[float] = []

    async def one() -> None:
        start = time.perf_counter()
        await health.Check(health_pb2.HealthCheckRequest(service=""))
        samples.append((time.perf_counter() - start) * 1000)

    began, calls, n = time.monotonic(), [], 0
    while (now := time.monotonic()) < began + SECONDS:
        due = began + n / RATE
        if due > now:
            await asyncio.sleep(due - now)
        calls.append(asyncio.ensure_future(one()))
        n += 1
    await asyncio.gather(*calls)
    samples.sort()
    return statistics.median(samples), percentile(samples, 0.99)


async def handler_time() -> tuple[float, float]:
    """The servicer's CheckConsent on a warm cache, in-process: what the service adds to gRPC."""
    from consent_service.cache import ConsentCache
    from consent_service.ledger import Ledger, PersonView
    from consent_service.server import ConsentServicer
    from mosaic.platform.consent import DEFAULT_PURPOSES, parse

    decision = consent_pb2.ConsentDecision(profile_id="p", purpose="marketing", granted=True)

    async def load_view(pid: str) -> PersonView:
        return PersonView(pid, (pid,), {"marketing": decision})

    ledger = Ledger(None, parse(DEFAULT_PURPOSES), consent_pb2.JURISDICTION_GDPR)  # type: ignore[arg-type]
    servicer = ConsentServicer(ledger, ConsentCache(load_view), None)  # type: ignore[arg-type]
    requests = [pb.CheckConsentRequest(profile_id=f"p{i % PEOPLE}", purpose="marketing") for i in range(20_000)]
    for request in requests[:PEOPLE]:
        await servicer.CheckConsent(request, None)
    samples = []
    for request in requests:
        start = time.perf_counter()
        await servicer.CheckConsent(request, None)
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return statistics.median(samples), percentile(samples, 0.99)


async def erase_time(store_name: str) -> tuple[float, dict[str, int]]:
    """Seconds to erase one person from the profile store (events and snapshots written first)."""
    from mosaic.events.v1 import event_pb2, privacy_request_pb2, resolved_pb2
    from mosaic.identity.v1 import identity_pb2
    from mosaic.platform.config import PlatformSettings
    from mosaic.profile.v1 import profile_pb2
    from mosaic.testing import cassandra_node
    from profile_service.cache import ProfileCache
    from profile_service.config import Settings as ProfileSettings
    from profile_service.privacy import ProfilePrivacy
    from profile_service.profiles import Profiles
    from profile_service.store import Latest, StoredSnapshot, open_store

    env = {"MOSAIC_AUTH": "off", "MOSAIC_STORE": store_name, "MOSAIC_DATA_DIR": tempfile.mkdtemp(prefix="bench-erase-")}
    keyspace = None
    if store_name == "cassandra":
        # BENCH_CASSANDRA_PORT: a node already listening there (another checkout's), used as it
        # is, in a keyspace of its own; else this checkout's node, started if need be.
        port = int(os.environ.get("BENCH_CASSANDRA_PORT") or 0) or cassandra_node.ensure_node()
        keyspace = cassandra_node.new_keyspace_settings(port, prefix="bench")
        env |= {"MOSAIC_CASSANDRA_PORT": str(keyspace.port), "MOSAIC_CASSANDRA_KEYSPACE": keyspace.keyspace}
    platform = PlatformSettings.from_env("profile", env)
    store = await open_store(platform)
    try:
        pid, start_s = "p-erased", 1_760_000_000
        span = 100 * 86400
        resolved = []
        for i in range(ERASE_EVENTS):
            event = event_pb2.Event(
                type=event_pb2.EVENT_TYPE_TRACK, event="Page Viewed", user_id="ada", message_id=f"m{i}"
            )
            event.timestamp.FromSeconds(start_s + i * span // ERASE_EVENTS)
            event.properties.update({"path": f"/page/{i}"})
            resolved.append(
                resolved_pb2.ResolvedEvent(
                    profile_id=pid, event=event, identifiers=[identity_pb2.Identifier(type="user_id", value="ada")]
                )
            )
        for chunk in range(0, ERASE_EVENTS, 200):
            await asyncio.gather(
                *(store.archive(pid, r, "Page Viewed", 90 * 86400) for r in resolved[chunk : chunk + 200])
            )
        profile = profile_pb2.Profile(profile_id=pid)
        profile.first_seen.FromSeconds(start_s)
        profile.last_seen.FromSeconds(start_s + span)
        for version in range(1, ERASE_SNAPSHOTS + 1):
            profile.version = version
            snapshot = profile_pb2.Snapshot(profile_id=pid, version=version, cause_message_id=f"m{version}")
            snapshot.recorded_at.FromSeconds(start_s + version * 60)
            snapshot.profile.CopyFrom(profile)
            await store.save(StoredSnapshot(snapshot, version % 20 == 1), Latest(profile), 14 * 86400)
        settings = ProfileSettings(platform, (), 90, 90, 20, 1000)
        profiles = Profiles(store, ProfileCache(1000, platform.partitions, range(platform.partitions)), None, settings)  # type: ignore[arg-type]  # erasing publishes nothing: no bus
        began = time.perf_counter()
        answer = await ProfilePrivacy(profiles).erase(
            privacy_request_pb2.PrivacyRequested(person_id=pid, profile_ids=[pid])
        )
        return time.perf_counter() - began, answer.counts
    finally:
        await store.close()
        if keyspace is not None:
            cassandra_node.drop_keyspace(keyspace)


async def main() -> None:
    nats = NatsServer().start()
    data = tempfile.mkdtemp(prefix="bench-consent-")
    env = {
        "MOSAIC_NATS_URL": nats.url,
        "MOSAIC_DATA_DIR": data,
        "MOSAIC_STORE": "embedded",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_SDK_DISABLED": "true",
        "MOSAIC_LOG_LEVEL": "WARNING",
    }
    process, port = _process.start_service("consent_service", env, os.path.join(data, "consent.log"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await _process.wait_serving(channel, process, "consent")
            stub = consent_service_pb2_grpc.ConsentServiceStub(channel)
            for i in range(0, PEOPLE, 2):  # half the people decided, half answered by the default
                await stub.SetConsent(
                    pb.SetConsentRequest(
                        decision=consent_pb2.ConsentDecision(
                            profile_id=f"p{i}", purpose="marketing", granted=i % 4 == 0
                        )
                    )
                )
            cold = []
            for i in range(PEOPLE):
                start = time.perf_counter()
                await stub.CheckConsent(pb.CheckConsentRequest(profile_id=f"p{i}", purpose="marketing"))
                cold.append((time.perf_counter() - start) * 1000)
            cold.sort()
            cpu = _process.cpu_seconds(process.pid)
            paced, paced_writes = await load(stub, open_loop=True)
            paced_cpu, cpu = _process.cpu_seconds(process.pid) - cpu, _process.cpu_seconds(process.pid)
            closed, writes = await load(stub, open_loop=False)
            closed_cpu = _process.cpu_seconds(process.pid) - cpu
            base50, base99 = await health_baseline(channel)
        paced.sort()
        closed.sort()
        print(
            f"CheckConsent at {RATE:,.0f} calls/s over gRPC ({PEOPLE} people, {SECONDS:.0f} s, {paced_writes} SetConsent"
            f" meanwhile): p50 {statistics.median(paced):.2f} ms, p99 {percentile(paced, 0.99):.2f} ms,"
            f" max {paced[-1]:.2f} ms; the service's CPU {paced_cpu * 1e6 / (len(paced) + paced_writes):.0f} us a call"
        )
        print(
            f"grpc.health.v1 Health/Check on the same server at {RATE:,.0f} calls/s (no consent code): p50 {base50:.2f} ms,"
            f" p99 {base99:.2f} ms"
        )
        print(
            f"CheckConsent saturated ({CONCURRENCY} callers back to back, {writes} SetConsent meanwhile):"
            f" {len(closed) / SECONDS:,.0f} calls/s, p50 {statistics.median(closed):.2f} ms,"
            f" p99 {percentile(closed, 0.99):.2f} ms; the service's CPU {closed_cpu * 1e6 / (len(closed) + writes):.0f} us a call"
        )
        print(
            f"CheckConsent first call per person (cache miss, SQLite read): p50 {statistics.median(cold):.2f} ms,"
            f" p99 {percentile(cold, 0.99):.2f} ms"
        )
        p50, p99 = await handler_time()
        print(f"CheckConsent handler on a warm cache, in-process (no gRPC): p50 {p50:.1f} us, p99 {p99:.1f} us")
    finally:
        process.terminate()
        process.wait(timeout=20)
        nats.close()
    for store_name in ("embedded", "cassandra"):
        seconds, counts = await erase_time(store_name)
        print(
            f"ErasePerson, profile's part, {store_name}: {seconds:.2f} s for {ERASE_EVENTS} archived events"
            f" over 100 days and {ERASE_SNAPSHOTS} snapshots (removed {counts})"
        )
