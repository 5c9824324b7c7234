"""Ingestion throughput and latency: events per second accepted *and durable* through the HTTP
batch endpoint and through IngestStream (batches of 100 events of about 500 bytes), against the
raw JetStream async publish rate from Python as the ceiling; then the p50/p99 acknowledgement
time of a 100-event batch at half of the peak rate, once JetStream has settled at that rate,
beside that of 100 raw JetStream publishes at the same rate into the same stream (the floor:
what JetStream itself takes).

One nats-server and one ingestion process (as in production: `python -m ingestion_service`)
are started here; the load comes from this process. On a 2-core machine the three share the
cores, so the figures are a floor for a deployment with the client elsewhere. The nats-server
gets one core (GOMAXPROCS=1), as a pod with a 1-CPU limit would: uncapped, each cycle of Go's
collector (every few seconds once the 24 h duplicate window holds a million ids) took both
cores for ~100 ms with its idle mark workers and stalled the two Python processes, which
alone moved the p99 below between 10 and 70 ms from run to run. The ingestion
process's CPU time per event is printed too: unlike the rates, it hardly moves when something
else runs on the machine.
Run: `uv run --frozen python -m bench ingest` (BENCH_SECONDS sets each phase's length).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import nats
from nats.js import api

from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc, source_pb2
from mosaic.platform import topics
from mosaic.testing.nats_server import NatsServer

SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
SETTLE = 3 * SECONDS
BATCH = 100
CONNECTIONS = 8
PROPERTIES: dict[str, Any] = {
    "plan": "enterprise",
    "seats": 25,
    "page": "/pricing/enterprise",
    "referrer": "https://example.com/blog",
    "campaign": "spring-launch",
    "currency": "EUR",
    "amount": 1234.5,
    "coupon": "SPRING24",
}
CONTEXT: dict[str, Any] = {
    "library": {"name": "bench", "version": "1.0"},
    "ip": "203.0.113.7",
    "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
}


def segment_template() -> str:
    """A /v1/batch body of 100 track events (~500 bytes each) with %s for each message id."""
    event = {
        "type": "track",
        "userId": "user-%s",
        "event": "Plan Upgraded",
        "messageId": "%s",
        "timestamp": "2026-01-01T10:00:00Z",
        "properties": PROPERTIES,
        "context": CONTEXT,
    }
    one = json.dumps(event)
    return '{"sentAt": "2026-01-01T10:00:00Z", "batch": [' + ",".join([one] * BATCH) + "]}"


def event_size() -> int:
    event = json.loads(segment_template() % tuple(["x"] * (2 * BATCH)))["batch"][0]
    return len(json.dumps(event))


class Ingestion:
    """`python -m ingestion_service` as its own process, with its ports read from its log."""

    def __init__(self, nats_url: str, data_dir: Path) -> None:
        env = {
            **os.environ,
            "MOSAIC_NATS_URL": nats_url,
            "MOSAIC_DATA_DIR": str(data_dir),
            "MOSAIC_GRPC_PORT": "0",
            "MOSAIC_AUTH": "off",
            "MOSAIC_HTTP_PORT": "0",
            "MOSAIC_LOG_LEVEL": "INFO",
            "OTEL_TRACES_EXPORTER": "none",
        }
        self.log = data_dir / "ingestion.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ingestion_service"], env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        self.grpc_port = self.http_port = 0
        deadline = time.monotonic() + 60
        while not (self.grpc_port and self.http_port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"ingestion did not start: {self.log.read_text()[-2000:]}")
            for line in self.log.read_text().splitlines():
                entry = json.loads(line) if line.startswith("{") else {}
                self.http_port = self.http_port or int(entry.get("http_port", 0))
                if entry.get("message") == "serving":
                    self.grpc_port = int(entry["grpc_port"])
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """CPU time the process has used (user + system), from /proc: Linux only."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def raw_publish_rate(nats_url: str, payload: bytes) -> float:
    """JetStream async publishes from Python, 100 in flight per batch, as fast as acks come back."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(
        api.StreamConfig(name="BENCH_RAW", subjects=["bench.raw.*"], storage=api.StorageType.FILE, duplicate_window=120)
    )
    sent, started = 0, time.monotonic()
    while time.monotonic() - started < SECONDS:
        futures = [
            await js.publish_async(f"bench.raw.{i % 8}", payload, headers={"Nats-Msg-Id": f"r{sent + i}"})
            for i in range(BATCH * 10)
        ]
        await asyncio.gather(*futures)
        sent += len(futures)
    rate = sent / (time.monotonic() - started)
    await js.delete_stream("BENCH_RAW")
    await nc.close()
    return rate


async def raw_batch_latencies(nats_url: str, rate: float, seconds: float) -> list[float]:
    """Batches of 100 JetStream publishes into events.raw at `rate` events/s, no ingestion in
    between; returns each batch's acknowledgement time."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    latencies: list[float] = []

    async def batch(number: int) -> None:
        sent = time.monotonic()
        futures = [
            await js.publish_async(
                topics.EVENTS_RAW.subject(i % 8, f"user-{i}"), b"x" * 560, headers={"Nats-Msg-Id": f"raw-{number}-{i}"}
            )
            for i in range(BATCH)
        ]
        await asyncio.gather(*futures)
        latencies.append(time.monotonic() - sent)

    started = time.monotonic()
    batches: list[asyncio.Task] = []
    while time.monotonic() - started < seconds:
        batches.append(asyncio.create_task(batch(len(batches))))
        await asyncio.sleep(max(0.0, started + len(batches) * BATCH / rate - time.monotonic()))
    await asyncio.gather(*batches)
    await nc.close()
    return latencies


async def stream_count(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return (await nc.jetstream().stream_info("EVENTS_RAW")).state.messages
    finally:
        await nc.close()


async def http_load(url: str, key: str, seconds: float, rate: float | None = None) -> tuple[int, list[float]]:
    """Batches of 100 over CONNECTIONS keep-alive connections, flat out or at `rate` events/s.
    Returns the events acknowledged and each batch's acknowledgement time."""
    template = segment_template()
    auth = {
        "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
        "Content-Type": "application/json",
    }
    latencies: list[float] = []
    acked = 0
    started = time.monotonic()
    interval = BATCH / rate if rate else 0.0
    next_slot = [started]

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal acked
        while time.monotonic() - started < seconds:
            if interval:  # open loop: every batch has its slot, late or not
                slot = next_slot[0]
                next_slot[0] += interval
                await asyncio.sleep(max(0.0, slot - time.monotonic()))
            prefix = uuid.uuid4().hex[:16]
            body = template % tuple(x for i in range(BATCH) for x in (i, f"{prefix}-{i}"))
            sent = time.monotonic()
            async with session.post(f"{url}/v1/batch", data=body.encode(), headers=auth) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
            latencies.append(time.monotonic() - sent)
            acked += BATCH

    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONNECTIONS)))
    return acked, latencies


def grpc_batch() -> pb.IngestStreamRequest:
    request = pb.IngestStreamRequest()
    for i in range(BATCH):
        event = request.events.add(type=event_pb2.EVENT_TYPE_TRACK, user_id=f"user-{i}", event="Plan Upgraded")
        event.properties.update(PROPERTIES)
        event.context.update(CONTEXT)
        event.timestamp.FromJsonString("2026-01-01T10:00:00Z")
    return request


async def stream_load(address: str, seconds: float, streams: int = 4) -> int:
    """IngestStream calls in parallel, each sending batches of 100 for `seconds`."""
    acked = 0

    async def one(stub, number: int) -> None:
        nonlocal acked
        template = grpc_batch()
        started = time.monotonic()

        async def batches():
            sequence = 0
            while time.monotonic() - started < seconds:
                request = pb.IngestStreamRequest()
                request.CopyFrom(template)
                request.source_id = "bench-grpc"
                for i, event in enumerate(request.events):
                    event.message_id = f"s{number}-{sequence}-{i}"
                sequence += 1
                yield request

        answer = await stub.IngestStream(batches())
        acked += answer.accepted + answer.duplicate

    async with grpc.aio.insecure_channel(address) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        await asyncio.gather(*(one(stub, n) for n in range(streams)))
    return acked


def per_event(service: Ingestion, cpu_before: float, events: int) -> str:
    return f"ingestion CPU {(service.cpu_seconds() - cpu_before) / events * 1e6:.1f} µs/event"


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else values[0]


async def main() -> None:
    nats_server = NatsServer(cores=1).start()
    data_dir = Path(tempfile.mkdtemp(prefix="mosaic-bench-"))
    service = Ingestion(nats_server.url, data_dir)
    try:
        size = event_size()
        print(f"events of {size} bytes (JSON), batches of {BATCH}, {SECONDS:.0f} s a phase, {os.cpu_count()} cores")
        raw = await raw_publish_rate(nats_server.url, b"x" * 560)
        print(f"raw JetStream async publish from Python:   {raw:>9,.0f} events/s  (the ceiling)")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
            created = await stub.CreateSource(pb.CreateSourceRequest(source=source_pb2.Source(source_id="bench-http")))
            await stub.CreateSource(pb.CreateSourceRequest(source=source_pb2.Source(source_id="bench-grpc")))
        key = created.source.write_keys[0].secret
        http_url = f"http://127.0.0.1:{service.http_port}"
        await http_load(http_url, key, 1.0)  # warm up
        # The client is the instrument: a full collection of its own heap must not stall it.
        gc.freeze()
        before, cpu = await stream_count(nats_server.url), service.cpu_seconds()
        started = time.monotonic()
        acked, latencies = await http_load(http_url, key, SECONDS)
        http_rate = acked / (time.monotonic() - started)
        durable = await stream_count(nats_server.url) - before
        print(
            f"HTTP /v1/batch, {CONNECTIONS} connections:        {http_rate:>9,.0f} events/s  "
            f"({http_rate / raw:.0%} of raw; {durable:,} of {acked:,} acked events in the stream)"
        )
        print(
            f"  flat out: batch ack p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms; {per_event(service, cpu, acked)}"
        )
        before, cpu = await stream_count(nats_server.url), service.cpu_seconds()
        started = time.monotonic()
        acked = await stream_load(f"127.0.0.1:{service.grpc_port}", SECONDS)
        stream_rate = acked / (time.monotonic() - started)
        durable = await stream_count(nats_server.url) - before
        print(
            f"gRPC IngestStream, 4 streams:              {stream_rate:>9,.0f} events/s  "
            f"({stream_rate / raw:.0%} of raw; {durable:,} of {acked:,} acked events in the stream)"
        )
        print(f"  {per_event(service, cpu, acked)}")
        half = http_rate / 2
        # The flat-out phases leave JetStream slow to answer for 20-30 s (its p99 several times
        # higher, with or without ingestion): latency is measured once it has settled at this rate.
        await http_load(http_url, key, SETTLE, rate=half)
        cpu = service.cpu_seconds()
        acked, latencies = await http_load(http_url, key, SECONDS, rate=half)
        print(
            f"HTTP at half the peak ({half:,.0f} events/s offered, after {SETTLE:.0f} s at it): batch ack p50 "
            f"{percentile(latencies, 0.5) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms "
            f"over {len(latencies):,} batches; {per_event(service, cpu, acked)}"
        )
        latencies = await raw_batch_latencies(nats_server.url, half, SECONDS)
        print(
            f"  raw JetStream, same rate and stream (the floor): batch ack p50 "
            f"{percentile(latencies, 0.5) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
        )
    finally:
        service.stop()
        nats_server.close()
