"""Delivery: webhook deliveries per second from one destination's worker pool to a local
receiver, and that destination's p99 latency alone and beside a second destination that
answers 500 to everything or never answers in time.

What runs: a nats-server (one core), the receivers in a process of their own
(bench/_delivery_receiver.py), and in this process the delivery service's sending half for
real: a `DestinationWorker` per destination (its own pull consumer on delivery.jobs.<id>,
connection pool, rate limit, circuit breaker, retry budget), signing each webhook, recording
each outcome in the embedded store and publishing it on delivery.outcome before the ack, and
asking the real consent service (a process of its own, `python -m consent_service`, as in a
deployment; CCPA defaults: the people decided nothing, so marketing is allowed) before every
send, as the workers do (through the answers they keep, `delivery_service.consent.Answers`,
which asks about the people a fetched batch of jobs holds no answer for in one CheckConsents call;
BENCH_DELIVERY_CONSENT_CACHE_SECONDS as the service's MOSAIC_DELIVERY_CONSENT_CACHE_SECONDS,
0 to ask before every send). The jobs are queued here as the planner queues them, for
BENCH_DELIVERY_PEOPLE (5,000) people in turn.

1. Throughput: 20,000 jobs queued for the healthy destination, drained; deliveries/s, and the
   CPU each delivery cost this process (the delivery service), the consent service and the
   receiver (read from /proc). Twice: first for people whose consent answers the workers do
   not hold yet (each is asked), then 20,000 more for the same people (answers kept).
2. Latency: jobs offered at a fixed rate (BENCH_DELIVERY_LOAD, 30 % of the first drain's
   throughput) for BENCH_SECONDS, once one job for each person has warmed the connections and
   the consent answers; queue-to-arrival p50/p99 of the healthy destination, alone,
   alone with a second queue fed at the same rate that no worker reads (the same queueing
   load: this process queues both, as the planner would, and nats-server stores both), then
   beside the failing one (fed at the same rate) in each mode; BENCH_DELIVERY_ROUNDS (2)
   rounds, since a shared machine moves a p99 between runs more than a neighbour does.

On the 2-core machine the receiver, the consent service, nats-server and this process share
the cores.
Run: `uv run --frozen python -m bench delivery`.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp
import grpc
import nats

from bench import _process
from delivery_service.consent import Answers
from delivery_service.jobs import JobQueue
from delivery_service.privacy import ErasedPeople
from delivery_service.ssrf import AddressPolicy
from delivery_service.store import open_store
from delivery_service.worker import DestinationWorker, WorkerSettings
from mosaic.consent.v1 import consent_service_pb2_grpc
from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.config import PlatformSettings
from mosaic.testing.nats_server import NatsServer

SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
DRAIN = int(os.environ.get("BENCH_DRAIN_JOBS", "20000"))
# The offered load as a share of the drained throughput: well below it, so that the machine's
# other work (it is shared) does not push the healthy queue over its capacity and the figures
# measure the neighbour, not an overload.
LOAD = float(os.environ.get("BENCH_DELIVERY_LOAD", "0.3"))
ROUNDS = int(os.environ.get("BENCH_DELIVERY_ROUNDS", "2"))
PEOPLE = int(os.environ.get("BENCH_DELIVERY_PEOPLE", "5000"))
# MOSAIC_DELIVERY_CONSENT_CACHE_SECONDS of the workers (0: consent asked before every send).
CONSENT_CACHE = float(os.environ.get("BENCH_DELIVERY_CONSENT_CACHE_SECONDS", "30"))


def destination(destination_id: str, port: int) -> delivery_pb2.Destination:
    return delivery_pb2.Destination(
        destination_id=destination_id,
        webhook_url=f"http://127.0.0.1:{port}/hook",
        segment_id="vip",
        purpose="marketing",
        signing_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        limits=delivery_pb2.Limits(concurrency=64, timeout_seconds=2.0),
    )


def job(destination_id: str, n: int) -> tuple[bytes, str]:
    job = delivery_pb2.DeliveryJob(
        delivery_id=f"{destination_id}:{n}:{time.time_ns()}",
        destination_id=destination_id,
        profile_id=f"p-{n % PEOPLE}",
        trigger="segment.entered:vip",
    )
    job.payload = json.dumps(
        {
            "type": "segment.entered",
            "segment_id": "vip",
            "profile_id": job.profile_id,
            "delivery_id": job.delivery_id,
            "t": time.time(),
        }
    )
    return job.SerializeToString(), job.delivery_id


async def queue_jobs(js, destination_id: str, count: int, offset: int = 0) -> None:
    subject = f"delivery.jobs.{destination_id}.bench"  # <destination>.<profile token>: one token will do here
    for start in range(0, count, 500):
        batch = [job(destination_id, offset + n) for n in range(start, min(count, start + 500))]
        await asyncio.gather(*(js.publish(subject, data, headers={"Nats-Msg-Id": key}) for data, key in batch))


async def offer(js, destination_ids: list[str], rate: float, seconds: float) -> int:
    """Queue `rate` jobs a second for each destination, in 10 ms ticks; how many each got."""
    tick, sent, start = 0.01, 0, time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) - sent
        if due > 0:
            await asyncio.gather(*(queue_jobs(js, d, due, sent) for d in destination_ids))
            sent += due
        await asyncio.sleep(tick)
    return sent


class Receivers:
    def __init__(self, mode: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench._delivery_receiver", mode], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None  # piped
        _, healthy, failing = self.process.stdout.readline().split()
        self.healthy, self.failing = int(healthy), int(failing)

    async def stats(self, what: str = "stats") -> dict:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.healthy}/{what}") as answer:
                return await answer.json()

    async def reset(self) -> None:
        async with aiohttp.ClientSession() as session:
            await session.post(f"http://127.0.0.1:{self.healthy}/reset")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


async def wait_for(receivers: Receivers, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while (await receivers.stats("count"))["count"] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the receiver did not get {count} deliveries")
        await asyncio.sleep(0.2)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 10) - 1] * 1000 if len(values) > 10 else float("nan")


async def scenario(
    name: str,
    mode: str | None,
    rate: float | None,
    nats_url: str,
    data_dir: str,
    consent,
    feed_other: bool = False,
    consent_pid: int = 0,
) -> dict:
    receivers = Receivers(mode or "500")
    store = await open_store(PlatformSettings.from_env("delivery", {"MOSAIC_AUTH": "off", "MOSAIC_DATA_DIR": data_dir}))
    bus = await Bus.connect(nats_url, "delivery", 8)
    await bus.ensure_streams()
    queue = await JobQueue.connect(nats_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    settings = WorkerSettings(policy=AddressPolicy(["loopback"]), max_attempts=5, retry_base=0.5)
    suffix = name.replace(" ", "-").replace(".", "-")
    healthy_id, failing_id = f"healthy-{suffix}", f"failing-{suffix}"
    answers = Answers(consent, CONSENT_CACHE)  # as the service keeps them, from its start
    await bus.listen(topics.CONSENT_CHANGED, answers.on_changed)
    erased = ErasedPeople(store)  # as the service keeps them: loaded, looked at before each send
    await erased.load()

    def pool() -> list[DestinationWorker]:
        found = [
            DestinationWorker(destination(healthy_id, receivers.healthy), queue, store, bus, settings, answers, erased)
        ]
        if mode:
            found.append(
                DestinationWorker(
                    destination(failing_id, receivers.failing), queue, store, bus, settings, answers, erased
                )
            )
        return found

    workers = pool()
    result: dict = {"name": name}
    try:
        if rate is None:
            # Twice: the people's consent answers not kept yet, then kept (the same people again).
            for phase in ("first", "again"):
                if phase == "again":
                    for w in workers:
                        await w.stop()
                    workers = pool()
                    await receivers.reset()
                asked, calls = answers.misses, answers.calls
                await queue_jobs(js, healthy_id, DRAIN, offset=DRAIN if phase == "again" else 0)
                start = time.monotonic()
                cpu = time.process_time()
                others = {
                    "consent": _process.cpu_seconds(consent_pid),
                    "receiver": _process.cpu_seconds(receivers.process.pid),
                }
                for w in workers:
                    w.start()
                await wait_for(receivers, DRAIN)
                elapsed = time.monotonic() - start
                figures = {"rate": DRAIN / elapsed, "cpu_us": (time.process_time() - cpu) / DRAIN * 1e6}
                figures["asked"], figures["calls"] = answers.misses - asked, answers.calls - calls
                pids = {"consent": consent_pid, "receiver": receivers.process.pid}
                figures |= {f"{n}_us": (_process.cpu_seconds(pids[n]) - was) / DRAIN * 1e6 for n, was in others.items()}
                result[phase] = figures
        else:
            for w in workers:
                w.start()
            # Warm the connection pools, and the consent answers of every person the load is for
            # (a running service holds them), so the figures measure the destinations, not
            # the consent service answering thousands of first questions.
            await queue_jobs(js, healthy_id, PEOPLE)
            await wait_for(receivers, PEOPLE)
            await receivers.reset()
            offered = [healthy_id, failing_id] if mode or feed_other else [healthy_id]
            expected = await offer(js, offered, rate, SECONDS)
            await wait_for(receivers, expected)
            latencies = (await receivers.stats())["latencies"]
            result |= {"p50": pct(latencies, 50), "p99": pct(latencies, 99), "count": len(latencies)}
            if mode:
                pending = await queue.pending(failing_id)
                result["failing_pending"] = pending
                result["breaker"] = workers[1].breaker.state
    finally:
        for w in workers:
            await w.stop()
        await nc.close()
        await queue.close()
        await bus.close()
        await store.close()
        receivers.stop()
    return result


def start_consent(nats_url: str, data_dir: str) -> tuple[subprocess.Popen, int]:
    """The consent service as a deployment runs it: a process of its own; its port."""
    env = {
        "MOSAIC_NATS_URL": nats_url,
        "MOSAIC_DATA_DIR": os.path.join(data_dir, "consent"),
        "MOSAIC_GRACE_SECONDS": "1",
        "MOSAIC_CONSENT_JURISDICTION": "ccpa",
    }
    return _process.start_service("consent_service", env, os.path.join(data_dir, "consent.log"))


async def main() -> None:
    server = NatsServer(cores=1).start()
    try:
        with tempfile.TemporaryDirectory(prefix="mosaic-bench-delivery-") as data_dir:
            process, port = start_consent(server.url, data_dir)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            try:
                await _process.wait_serving(channel, process, "consent")
                await run(server.url, data_dir, consent_service_pb2_grpc.ConsentServiceStub(channel), process.pid)
            finally:
                await channel.close()
                process.terminate()
                process.wait()
    finally:
        server.close()


async def run(nats_url: str, data_dir: str, consent, consent_pid: int) -> None:
    drained = await scenario("drain", None, None, nats_url, data_dir, consent, consent_pid=consent_pid)
    print(
        f"throughput: {DRAIN:,} queued jobs for {min(DRAIN, PEOPLE):,} people drained to one destination, "
        f"twice (consent answers kept {CONSENT_CACHE:.0f} s):",
        flush=True,
    )
    for phase, label in (("first", "their answers not kept yet"), ("again", "the same people again")):
        d = drained[phase]
        print(
            f"  {label + ':':<27} {d['rate']:6,.0f} webhook deliveries/s; CPU per delivery {d['cpu_us']:4.0f} µs in"
            f" the delivery service (this process), {d['consent_us']:4.0f} µs in the consent service,"
            f" {d['receiver_us']:4.0f} µs in the receiver; consent asked about {d['asked']:,} people"
            f" in {d['calls']:,} CheckConsents calls",
            flush=True,
        )
    rate = round(drained["first"]["rate"] * LOAD, -1)
    print(
        f"latency at {rate:,.0f} deliveries/s offered ({LOAD:.0%} of that) for {SECONDS:.0f} s, queue to arrival;"
        f" {ROUNDS} rounds, the three runs of a round back to back:"
    )
    for round_ in range(1, ROUNDS + 1):
        alone = await scenario(f"alone {round_}", None, rate, nats_url, data_dir, consent)
        print(
            f"  {round_}. healthy alone:                 p50 {alone['p50']:7.1f} ms  p99 {alone['p99']:7.1f} ms",
            flush=True,
        )
        queued = await scenario(f"queued {round_}", None, rate, nats_url, data_dir, consent, feed_other=True)
        print(
            f"  {round_}. alone, a 2nd queue fed, unread: p50 {queued['p50']:7.1f} ms  p99 {queued['p99']:7.1f} ms"
            f"  ({(queued['p99'] / alone['p99'] - 1) * 100:+.0f} % p99: the load of queueing twice)",
            flush=True,
        )
        for mode, label in (("500", "answers 500"), ("timeout", "times out")):
            beside = await scenario(f"beside {mode} {round_}", mode, rate, nats_url, data_dir, consent)
            change = (beside["p99"] / queued["p99"] - 1) * 100
            print(
                f"  {round_}. beside one that {label + ':':<13} p50 {beside['p50']:7.1f} ms  p99 {beside['p99']:7.1f} ms"
                f"  ({change:+.0f} % p99 vs the fed unread queue; the failing queue holds {beside['failing_pending']:,} jobs, "
                f"circuit {beside['breaker']})",
                flush=True,
            )
