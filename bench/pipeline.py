"""The whole pipeline (issue 19): HTTP /v1/batch → ingestion → identity → profile → segmentation.

The mesh runs as `mosaic run` starts it: the six services as separate processes (mosaic.cli.mesh)
beside a nats-server on one core, on the embedded store (`BENCH_STORE=cassandra` for the local
Cassandra node, a fresh keyspace). This process is the client: it defines twenty segments through
the segmentation API and sends events over HTTP in batches of 100, with the issue's mix: 10 %
identify (e-mail, plan, country), 80 % product views, 10 % orders; 15 % of events come from a
person never seen before, the rest from people seen earlier in the run.

1. Capacity: BENCH_EVENTS events sent as fast as ingestion takes them (it is ~10x faster than the
   rest), then the rate at which they are folded into profiles (profile.updated published) and
   evaluated by segmentation (its consumers' acks), over the time from the first send until the
   last one is done.
2. Latency at half that rate (or BENCH_RATE), open loop, for BENCH_SECONDS: from each batch's HTTP
   acknowledgement to the profile.updated its event caused, and to the segment.membership a
   profile version caused (seen on a plain NATS subscription here), p50 and p99; and hop by hop,
   from the ack to events.raw (ingestion), to events.resolved (identity), to profile.updated
   (profile) and to segment.membership (segmentation), each from when the event reached the hop
   before (the client subscribes to events.raw and events.resolved only for this phase).
3. CPU seconds per event of each service of the pipeline (/proc/<pid>/stat, over both phases),
   and of those beside it: consent and delivery (they read events.resolved too), nats-server and
   the Cassandra node (the node's own work, compaction included), and resident
   memory (VmRSS) of each, with the profiles the run made.

With BENCH_WARMUP=N, N events of the mix go first, not counted (a Cassandra node's JIT compiler
is busy for minutes on a cold node: see WARMUP).

With BENCH_PROFILES=N, a population comes first: one identify each for N new people (the
issue's memory target is 1,000,000 profiles), folded and evaluated before the phases above,
whose known people are then drawn from the whole population, so the caches see a population
larger than they hold. Its rate and the memory right after it are printed too.

The machine's two cores are shared by the client, nats-server, six services (and Cassandra):
compare figures only between runs taken in the same conditions.
Run: `make bench BENCH=pipeline` (or `uv run --frozen python -m bench pipeline`).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import math
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import grpc
import nats
from google.protobuf import struct_pb2

from bench import _process
from mosaic.cli.mesh import Mesh
from mosaic.events.v1 import event_pb2, profile_updated_pb2, resolved_pb2, segment_membership_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2, ingestion_service_pb2_grpc, source_pb2
from mosaic.platform import topics
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2, segmentation_service_pb2_grpc
from mosaic.testing import cassandra_node
from mosaic.testing.nats_server import NatsServer

EVENTS = int(os.environ.get("BENCH_EVENTS", "30000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
STORE = os.environ.get("BENCH_STORE", "embedded")
PROFILES = int(os.environ.get("BENCH_PROFILES", "0"))
# A Cassandra node's JIT compiler works through the first minutes of this traffic: on a cold
# node it took 37-45 % of the node's CPU in the capacity phase, and still 7-49 % a round over
# 60,000 events of warm-up, while a node warmed by five earlier runs spent ~2.5x less CPU an
# event. The bench prints the compiler's share; BENCH_WARMUP events of the mix, not counted,
# go first when set.
WARMUP = int(os.environ.get("BENCH_WARMUP", "0"))
JIT = "C2 Compiler"  # the names of the JVM's optimising compiler threads
BATCH = 100
CONNECTIONS = 8
PIPELINE = ("ingestion", "identity", "profile", "segmentation")
PLANS = ("free", "starter", "pro", "enterprise")
COUNTRIES = ("DE", "FR", "GB", "US", "JP")


def segments() -> list[segment_pb2.Segment]:
    """Twenty segments over identify traits and the built-in commerce traits."""

    def trait(name: str, op: segment_pb2.Operator, value: struct_pb2.Value | None = None) -> segment_pb2.Condition:
        return segment_pb2.Condition(trait=segment_pb2.TraitCondition(trait=name, operator=op, value=value))

    s, n = (lambda v: struct_pb2.Value(string_value=v)), (lambda v: struct_pb2.Value(number_value=v))
    conditions = {f"plan-{p}": trait("plan", segment_pb2.OPERATOR_EQUALS, s(p)) for p in PLANS}
    conditions |= {f"country-{c.lower()}": trait("country", segment_pb2.OPERATOR_EQUALS, s(c)) for c in COUNTRIES}
    conditions |= {f"orders-over-{k}": trait("orders", segment_pb2.OPERATOR_GREATER_THAN, n(k)) for k in (0, 1, 2, 4)}
    conditions |= {
        f"ltv-over-{k}": trait("lifetime_value", segment_pb2.OPERATOR_GREATER_THAN, n(k)) for k in (50, 200, 500)
    }
    conditions["has-email"] = trait("email", segment_pb2.OPERATOR_EXISTS)
    conditions["example-email"] = trait("email", segment_pb2.OPERATOR_CONTAINS, s("@example.com"))
    conditions["paying"] = segment_pb2.Condition(
        any=segment_pb2.ConditionList(
            conditions=[
                trait("plan", segment_pb2.OPERATOR_EQUALS, s("pro")),
                trait("plan", segment_pb2.OPERATOR_EQUALS, s("enterprise")),
            ]
        )
    )
    conditions["big-spender-de"] = segment_pb2.Condition(
        all=segment_pb2.ConditionList(
            conditions=[
                trait("country", segment_pb2.OPERATOR_EQUALS, s("DE")),
                trait("lifetime_value", segment_pb2.OPERATOR_GREATER_THAN, n(100)),
            ]
        )
    )
    return [segment_pb2.Segment(segment_id=i, name=i, condition=c) for i, c in conditions.items()]


class Traffic:
    """Events of the issue's mix, as Segment JSON."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.people: list[str] = []
        self.random = random.Random(19)

    def event(self) -> dict:
        r = self.random
        if not self.people or r.random() < 0.15:
            self.people.append(f"{self.run}-{len(self.people)}")
            user = self.people[-1]
        else:
            user = r.choice(self.people)
        kind = r.random()  # 10 % identify, 80 % product views, 10 % orders
        return self.identify(user) if kind < 0.1 else self.track(user, order=kind >= 0.9)

    def newcomer(self) -> dict:
        """An identify of a person never seen before (the population phase)."""
        self.people.append(f"{self.run}-{len(self.people)}")
        return self.identify(self.people[-1])

    def identify(self, user: str) -> dict:
        r = self.random
        return {
            **self._base(user),
            "type": "identify",
            "traits": {"email": f"{user}@example.com", "plan": r.choice(PLANS), "country": r.choice(COUNTRIES)},
        }

    @staticmethod
    def _base(user: str) -> dict:
        return {"userId": user, "messageId": uuid.uuid4().hex, "timestamp": datetime.now(timezone.utc).isoformat()}

    def track(self, user: str, order: bool) -> dict:
        r = self.random
        base = self._base(user)
        if not order:
            return {
                **base,
                "type": "track",
                "event": "Product Viewed",
                "properties": {"sku": f"sku-{r.randrange(500)}", "price": r.randrange(5, 300), "category": "shoes"},
            }
        return {
            **base,
            "type": "track",
            "event": "Order Completed",
            "properties": {"order_id": uuid.uuid4().hex[:12], "revenue": r.randrange(10, 400), "currency": "EUR"},
        }


class Observer:
    """A plain NATS subscription to profile.updated and segment.membership: when each arrived."""

    def __init__(self) -> None:
        self.updated: dict[str, float] = {}  # cause message id → when its profile.updated arrived
        self.versions: dict[tuple[str, int], str] = {}  # (profile, version) → cause message id
        self.memberships: dict[str, float] = {}  # cause message id → first segment.membership it caused
        self.raw: dict[str, float] = {}  # message id → when its events.raw arrived (latency phase)
        self.resolved: dict[str, float] = {}  # message id → when its events.resolved arrived (latency phase)

    async def start(self, url: str) -> None:
        self.nc = await nats.connect(url)

        async def updated(msg) -> None:
            update = profile_updated_pb2.ProfileUpdated.FromString(msg.data)
            cause = update.cause_message_id.rpartition(":")[2]  # source:message id
            self.updated.setdefault(cause, time.monotonic())
            self.versions[(update.profile_id, update.version)] = cause

        async def membership(msg) -> None:
            change = segment_membership_pb2.SegmentMembershipChanged.FromString(msg.data)
            cause = self.versions.get((change.profile_id, change.profile_version))
            if cause is not None:
                self.memberships.setdefault(cause, time.monotonic())

        await self.nc.subscribe(topics.PROFILE_UPDATED.wildcard, cb=updated)
        await self.nc.subscribe(topics.SEGMENT_MEMBERSHIP.wildcard, cb=membership)
        self.js = self.nc.jetstream()

    async def follow_hops(self) -> list:
        """Subscribe to the two topics before profile.updated too (their decoding costs this
        client CPU, so only while latency is measured); gives the subscriptions."""

        async def raw(msg) -> None:
            self.raw.setdefault(event_pb2.Event.FromString(msg.data).message_id, time.monotonic())

        async def resolved(msg) -> None:
            message_id = resolved_pb2.ResolvedEvent.FromString(msg.data).event.message_id
            self.resolved.setdefault(message_id, time.monotonic())

        return [
            await self.nc.subscribe(topics.EVENTS_RAW.wildcard, cb=raw),
            await self.nc.subscribe(topics.EVENTS_RESOLVED.wildcard, cb=resolved),
        ]

    async def backlogs(self, partitions: int) -> dict[str, int]:
        """Messages each pipeline consumer has not acknowledged yet, over its partitions."""
        found = {}
        for service, topic in (
            ("identity", topics.EVENTS_RAW),
            ("profile", topics.EVENTS_RESOLVED),
            ("segmentation", topics.PROFILE_UPDATED),
        ):
            found[service] = 0
            for p in range(partitions):
                info = await self.js.consumer_info(topic.stream, f"{service}-{p}")
                found[service] += info.num_pending + info.num_ack_pending
        return found

    async def watch_backlogs(self, partitions: int, stop: asyncio.Event) -> dict[str, int]:
        """The largest backlog of each consumer until `stop`, sampled every 0.5 s."""
        largest: dict[str, int] = {}
        while not stop.is_set():
            for service, backlog in (await self.backlogs(partitions)).items():
                largest[service] = max(largest.get(service, 0), backlog)
            await asyncio.sleep(0.5)
        return largest

    async def folded(self) -> int:
        return (await self.js.stream_info(topics.PROFILE_UPDATED.stream)).state.messages

    async def segmented(self, partitions: int) -> int:
        """profile.updated messages segmentation has acknowledged."""
        waiting = 0
        for p in range(partitions):
            info = await self.js.consumer_info(topics.PROFILE_UPDATED.stream, f"segmentation-{p}")
            waiting += info.num_pending + info.num_ack_pending
        return await self.folded() - waiting


async def send(
    url: str,
    key: str,
    traffic: Traffic,
    events: int | None,
    rate: float | None = None,
    seconds: float = 0.0,
    draw=None,
) -> dict[str, float]:
    """Batches of 100 over keep-alive connections: `events` flat out, or at `rate` for `seconds`.
    Returns each event's message id → when its batch was acknowledged."""
    auth = {
        "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
        "Content-Type": "application/json",
    }
    acked: dict[str, float] = {}
    refused: dict[int, int] = {}  # status -> batches told to come back later
    started = time.monotonic()
    slots = [started]
    left = [events if events is not None else 1 << 60]

    async def worker(session: aiohttp.ClientSession) -> None:
        while left[0] > 0 and (rate is None or time.monotonic() - started < seconds):
            if rate:  # open loop: every batch has its slot, late or not
                slot, slots[0] = slots[0], slots[0] + BATCH / rate
                await asyncio.sleep(max(0.0, slot - time.monotonic()))
            left[0] -= BATCH
            batch = [(draw or traffic.event)() for _ in range(BATCH)]
            body = json.dumps({"batch": batch})
            while True:  # as an SDK does: a 429 or 503 is sent again after its Retry-After
                async with session.post(f"{url}/v1/batch", data=body, headers=auth) as response:
                    if response.status == 200:
                        break
                    if response.status not in (429, 503):
                        raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
                    refused[response.status] = refused.get(response.status, 0) + 1
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
            now = time.monotonic()
            acked.update((e["messageId"], now) for e in batch)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONNECTIONS)))
    if refused:
        print(f"  batches sent again after a refusal: {refused} (status: batches)")
    return acked


async def wait_until(check, target: int, timeout: float = 900.0) -> float:
    """Poll `check()` until it reaches `target`; returns when it did."""
    deadline = time.monotonic() + timeout
    while (value := await check()) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"stuck at {value:,} of {target:,}")
        await asyncio.sleep(0.1)
    return time.monotonic()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def report_memory(mesh: Mesh, profiles: int) -> None:
    rss = {name: rss_mb(process.pid) for name, process in mesh.processes.items()}
    print(
        "resident memory: "
        + ", ".join(f"{name} {mb:,.0f} MB" for name, mb in rss.items())
        + f"; {sum(rss.values()):,.0f} MB in all with {profiles:,} profiles",
        flush=True,
    )


def _p50_p99(acked: dict[str, float], before: dict[str, float], after: dict[str, float]) -> tuple[float, float, int]:
    """p50 and p99 in ms from `before` to `after` over the acknowledged events both saw, and how many."""
    samples = [(after[m] - before[m]) * 1000 for m in acked if m in before and m in after]
    if len(samples) < 2:
        return math.nan, math.nan, len(samples)
    q = statistics.quantiles(samples, n=100)
    return q[49], q[98], len(samples)


def latencies(acked: dict[str, float], arrived: dict[str, float]) -> str:
    p50, p99, count = _p50_p99(acked, acked, arrived)
    return f"p50 {p50:.0f} ms, p99 {p99:.0f} ms over {count:,} events"


def hops(acked: dict[str, float], observer: Observer) -> str:
    """p50/p99 of each hop: from when an event reached the hop before to when it left this one."""
    stages = [
        ("ingestion", acked, observer.raw),
        ("identity", observer.raw, observer.resolved),
        ("profile", observer.resolved, observer.updated),
        ("segmentation", observer.updated, observer.memberships),
    ]
    found = []
    for name, before, after in stages:
        p50, p99, _ = _p50_p99(acked, before, after)
        found.append(f"{name} {p50:.0f}/{p99:.0f}")
    return ", ".join(found)


async def main() -> None:
    nats_server = NatsServer(cores=1).start()
    data_dir = Path(tempfile.mkdtemp(prefix="mosaic-bench-pipeline-"))
    # gRPC authentication costs nothing on the event path (NATS); the segments are created over
    # plaintext gRPC.
    env = {
        "MOSAIC_AUTH": "off",
        "MOSAIC_NATS_URL": nats_server.url,
        "MOSAIC_STORE": STORE,
        "MOSAIC_DATA_DIR": str(data_dir / "data"),
        "MOSAIC_INGEST_OPEN_SOURCES": "true",
        "OTEL_TRACES_EXPORTER": "none",
    }
    keyspace = None
    if STORE == "cassandra":
        keyspace = cassandra_node.new_keyspace_settings(cassandra_node.ensure_node(), prefix="bench")
        env |= {"MOSAIC_CASSANDRA_KEYSPACE": keyspace.keyspace, "MOSAIC_CASSANDRA_PORT": str(keyspace.port)}
    mesh = Mesh(env, data_dir / "logs")
    observer = Observer()
    try:
        mesh.start()
        await observer.start(nats_server.url)
        async with grpc.aio.insecure_channel(mesh.address("segmentation")) as channel:
            stub = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)
            for segment in segments():
                await stub.CreateSegment(segmentation_service_pb2.CreateSegmentRequest(segment=segment))
        async with grpc.aio.insecure_channel(mesh.address("ingestion")) as channel:
            ingestion = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
            created = await ingestion.CreateSource(
                ingestion_service_pb2.CreateSourceRequest(source=source_pb2.Source(source_id="bench-http"))
            )
        key = created.source.write_keys[0].secret
        url = f"http://127.0.0.1:{mesh.http_ports['ingestion']}"
        await asyncio.sleep(6)  # segmentation reloads its catalog every 5 s
        pids = {name: mesh.processes[name].pid for name in PIPELINE}
        assert nats_server.process is not None
        # What an event costs beside the pipeline: consent and delivery read events.resolved too.
        servers = {name: mesh.processes[name].pid for name in ("consent", "delivery")}
        servers["nats-server"] = nats_server.process.pid
        if keyspace is not None and (node := cassandra_node.node_pid()):
            servers["cassandra"] = node
        partitions = int(os.environ.get("MOSAIC_PARTITIONS", "8"))  # as the services read it
        traffic = Traffic(uuid.uuid4().hex[:6])
        gc.freeze()  # the client is the instrument: its collector must not stall it
        print(
            f"store {STORE}, {len(segments())} segments, {os.cpu_count()} cores shared by client, nats-server "
            f"and six services{' and Cassandra' if keyspace else ''}",
            flush=True,
        )

        populated = 0
        if PROFILES:
            started = time.monotonic()
            await send(url, key, traffic, PROFILES, draw=traffic.newcomer)
            populated = len(traffic.people)
            await wait_until(observer.folded, populated, timeout=7200.0)
            await wait_until(lambda: observer.segmented(partitions), populated, timeout=7200.0)
            print(
                f"population: {populated:,} people, one identify each, folded and evaluated at "
                f"{populated / (time.monotonic() - started):,.0f}/s",
                flush=True,
            )
            report_memory(mesh, populated)

        done = populated  # events folded and evaluated before the phases measured
        if WARMUP:
            started = time.monotonic()
            await send(url, key, traffic, WARMUP)
            done += WARMUP
            await wait_until(observer.folded, done)
            await wait_until(lambda: observer.segmented(partitions), done)
            print(
                f"warm-up: {WARMUP:,} events, not counted, at {WARMUP / (time.monotonic() - started):,.0f}/s",
                flush=True,
            )

        cpu = {name: _process.cpu_seconds(pid) for name, pid in (pids | servers).items()}
        jit = _process.thread_cpu_seconds(servers["cassandra"], JIT) if "cassandra" in servers else 0.0
        started = time.monotonic()
        await send(url, key, traffic, EVENTS)
        ingested = time.monotonic()
        folded_at = await wait_until(observer.folded, done + EVENTS)
        segmented_at = await wait_until(lambda: observer.segmented(partitions), done + EVENTS)
        fold_rate = EVENTS / (folded_at - started)
        print(
            f"capacity, {EVENTS:,} events ({len(traffic.people):,} people): ingested {EVENTS / (ingested - started):,.0f}/s;"
            f" folded into profiles {fold_rate:,.0f}/s; past segmentation {EVENTS / (segmented_at - started):,.0f}/s",
            flush=True,
        )
        sent = EVENTS

        half = float(os.environ.get("BENCH_RATE", 0)) or fold_rate / 2  # a fixed rate compares runs at equal load
        before = await observer.folded()
        stop = asyncio.Event()
        watching = asyncio.create_task(observer.watch_backlogs(partitions, stop))
        following = await observer.follow_hops()
        acked = await send(url, key, traffic, None, rate=half, seconds=SECONDS)
        stop.set()
        largest = await watching
        sent += len(acked)
        await wait_until(observer.folded, before + len(acked))
        await wait_until(lambda: observer.segmented(partitions), before + len(acked))
        await asyncio.sleep(1)
        for subscription in following:
            await subscription.unsubscribe()
        print(
            f"at half ({half:,.0f} events/s offered for {SECONDS:.0f} s): ack → profile.updated "
            f"{latencies(acked, observer.updated)}; ack → segment.membership {latencies(acked, observer.memberships)}"
        )
        print(f"  hop by hop, p50/p99 ms (each from the hop before): {hops(acked, observer)}")
        print("  largest backlog while sending: " + ", ".join(f"{name} {n:,}" for name, n in largest.items()))
        used = {name: _process.cpu_seconds(pid) - cpu[name] for name, pid in (pids | servers).items()}
        print(
            "CPU per event: "
            + ", ".join(f"{name} {used[name] / sent * 1e6:,.0f} µs" for name in pids)
            + f" (total {sum(used[name] for name in pids) / sent * 1e6:,.0f} µs; {sent:,} events); "
            + ", ".join(f"{name} {used[name] / sent * 1e6:,.0f} µs" for name in servers)
            + (
                f" (its JIT compiler {(_process.thread_cpu_seconds(servers['cassandra'], JIT) - jit) / used['cassandra']:.0%})"
                if "cassandra" in servers
                else ""
            )
        )
        report_memory(mesh, len(traffic.people))
    finally:
        await observer.nc.close() if hasattr(observer, "nc") else None
        mesh.stop()
        nats_server.close()
        if keyspace is not None:
            cassandra_node.drop_keyspace(keyspace)
