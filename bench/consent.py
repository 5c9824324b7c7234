"""Consent benchmark (issue 15): CheckConsent p50 and p99 under load.

The consent service runs as its own process (embedded store, a fresh nats-server); this
process is the load, over one gRPC channel, about PEOPLE people, while a writer records a
decision every 20 ms (each a `consent.changed` notice that drops cached answers):

1. open loop: calls started at a fixed RATE per second for SECONDS, whatever the answers'
   speed, so the latency is a caller's at that load and not the queue of a saturated loop;
2. closed loop: CONCURRENCY callers back to back, for the most calls per second;
3. the handler's own time on a cache hit, in-process without gRPC.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mosaic.consent.v1 import consent_pb2, consent_service_pb2 as pb, consent_service_pb2_grpc
from mosaic.testing.nats_server import NatsServer

PEOPLE = int(os.environ.get("BENCH_CONSENT_PEOPLE", "2000"))
SECONDS = float(os.environ.get("BENCH_CONSENT_SECONDS", "10"))
CONCURRENCY = int(os.environ.get("BENCH_CONSENT_CONCURRENCY", "16"))
RATE = float(os.environ.get("BENCH_CONSENT_RATE", "500"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(samples: list[float], share: float) -> float:
    return samples[min(len(samples) - 1, int(len(samples) * share))]


async def wait_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(200):
        try:
            if (await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)).status == 1:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("consent service did not start")


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
        while time.monotonic() < stop:
            await stub.SetConsent(pb.SetConsentRequest(decision=consent_pb2.ConsentDecision(
                profile_id=f"p{rng.randrange(PEOPLE)}", purpose="marketing", granted=rng.random() < 0.5)))
            writes += 1
            await asyncio.sleep(0.02)

    if open_loop:
        await asyncio.gather(writer(), paced())
    else:
        await asyncio.gather(writer(), *(caller(i) for i in range(CONCURRENCY)))
    return samples, writes


async def handler_time() -> tuple[float, float]:
    """The servicer's CheckConsent on a warm cache, in-process: what the service adds to gRPC."""
    from consent_service.app import ConsentServicer
    from consent_service.cache import ConsentCache
    from consent_service.ledger import Ledger, PersonView
    from consent_service.purposes import DEFAULT_PURPOSES, parse

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


async def main() -> None:
    nats = NatsServer().start()
    port = free_port()
    data = tempfile.mkdtemp(prefix="bench-consent-")
    env = {**os.environ, "MOSAIC_NATS_URL": nats.url, "MOSAIC_GRPC_PORT": str(port), "MOSAIC_DATA_DIR": data,
           "MOSAIC_STORE": "embedded", "OTEL_TRACES_EXPORTER": "none", "OTEL_SDK_DISABLED": "true",
           "MOSAIC_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen([sys.executable, "-m", "consent_service"], env=env)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(channel)
            stub = consent_service_pb2_grpc.ConsentServiceStub(channel)
            for i in range(0, PEOPLE, 2):  # half the people decided, half answered by the default
                await stub.SetConsent(pb.SetConsentRequest(decision=consent_pb2.ConsentDecision(
                    profile_id=f"p{i}", purpose="marketing", granted=i % 4 == 0)))
            cold = []
            for i in range(PEOPLE):
                start = time.perf_counter()
                await stub.CheckConsent(pb.CheckConsentRequest(profile_id=f"p{i}", purpose="marketing"))
                cold.append((time.perf_counter() - start) * 1000)
            cold.sort()
            paced, paced_writes = await load(stub, open_loop=True)
            closed, writes = await load(stub, open_loop=False)
        paced.sort()
        closed.sort()
        print(f"CheckConsent at {RATE:,.0f} calls/s over gRPC ({PEOPLE} people, {SECONDS:.0f} s, {paced_writes} SetConsent"
              f" meanwhile): p50 {statistics.median(paced):.2f} ms, p99 {percentile(paced, 0.99):.2f} ms,"
              f" max {paced[-1]:.2f} ms")
        print(f"CheckConsent saturated ({CONCURRENCY} callers back to back, {writes} SetConsent meanwhile):"
              f" {len(closed) / SECONDS:,.0f} calls/s, p50 {statistics.median(closed):.2f} ms,"
              f" p99 {percentile(closed, 0.99):.2f} ms")
        print(f"CheckConsent first call per person (cache miss, SQLite read): p50 {statistics.median(cold):.2f} ms,"
              f" p99 {percentile(cold, 0.99):.2f} ms")
        p50, p99 = await handler_time()
        print(f"CheckConsent handler on a warm cache, in-process (no gRPC): p50 {p50:.1f} us, p99 {p99:.1f} us")
    finally:
        process.terminate()
        process.wait(timeout=20)
        nats.close()
