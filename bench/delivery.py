"""Delivery: webhook deliveries per second from one destination's workers to a local receiver,
and that destination's p99 latency alone and beside a second destination that answers 500 to
everything or never answers in time.

What runs: a nats-server (one core), each destination's receiver in a process of its own
(bench/_delivery_receiver.py), the real consent service (`python -m consent_service`, CCPA
defaults: the people decided nothing, so marketing is allowed), and the delivery service's
sending half for real in BENCH_DELIVERY_REPLICAS (2) replica processes
(bench/_delivery_workers.py), as a deployment on two cores runs it: in each, a
`DestinationWorker` per destination (the replicas share its pull consumer on
delivery.jobs.<id>; each has its own connection pool, rate limit, circuit breaker, retry
budget), signing each webhook, recording each outcome in the embedded store (one file the
replicas share) and publishing it on delivery.outcome before the ack, and asking consent before
every send through the answers the replica keeps (`delivery_service.consent.Answers`, which
asks about the people a fetched batch of jobs holds no answer for in one CheckConsents call;
BENCH_DELIVERY_CONSENT_CACHE_SECONDS as the service's MOSAIC_DELIVERY_CONSENT_CACHE_SECONDS, 0
to ask before every send). This process queues the jobs as the planner queues them, for
BENCH_DELIVERY_PEOPLE (5,000) people in turn.

1. Throughput: BENCH_DRAIN_JOBS (20,000) jobs queued for the healthy destination, then drained
   by one replica and by BENCH_DELIVERY_REPLICAS; deliveries/s, and the CPU each delivery cost
   the replicas, the consent service, the receiver and nats-server (read from /proc), so the
   rate two cores could carry at most is printed beside it. Twice each: first for people whose
   consent answers the replicas do not hold yet (each is asked), then as many more jobs for
   the same people (answers kept, as a running service holds them).
2. Latency, with BENCH_DELIVERY_REPLICAS replicas: jobs offered at a fixed rate
   (BENCH_DELIVERY_LOAD, 30 % of their first drain's rate, or BENCH_DELIVERY_RATE a second,
   to compare runs at equal load) for BENCH_SECONDS, once one job for
   each person has warmed the connections and the consent answers; queue-to-arrival p50/p99
   of the healthy destination, alone, alone with a second queue fed at the same rate that no
   worker reads (the same queueing load: this process queues both, as the planner would, and
   nats-server stores both), then beside a second destination fed at the same rate that works
   (answers 200: what any neighbour costs the machine), that answers 500, and that times out;
   BENCH_DELIVERY_ROUNDS (2) rounds, since a shared machine moves a p99 between runs more than
   a neighbour does, each round starting one run later (none always follows another); how
   many requests reached the neighbour shows its circuit at work.

On the 2-core machine all of these processes share the cores.
Run: `uv run --frozen python -m bench delivery`.
"""

from __future__ import annotations

import asyncio
import gc
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
from bench._delivery_workers import CONSENT_CACHE
from delivery_service.jobs import JobQueue
from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform.bus import Bus
from mosaic.testing.nats_server import NatsServer

SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
DRAIN = int(os.environ.get("BENCH_DRAIN_JOBS", "20000"))
# The offered load as a share of the drained throughput: well below it, so that the machine's
# other work (it is shared) does not push the healthy queue over its capacity and the figures
# measure the neighbour, not an overload.
LOAD = float(os.environ.get("BENCH_DELIVERY_LOAD", "0.3"))
ROUNDS = int(os.environ.get("BENCH_DELIVERY_ROUNDS", "2"))
PEOPLE = int(os.environ.get("BENCH_DELIVERY_PEOPLE", "5000"))
# Delivery replicas sharing each destination's queue, each a process: a deployment on two
# cores runs two. The drain is measured with one and with this many.
REPLICAS = int(os.environ.get("BENCH_DELIVERY_REPLICAS", "2"))


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


def start_receiver(mode: str) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench._delivery_receiver", mode], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None  # piped
    word, port = process.stdout.readline().split()
    assert word == "port", word
    return process, int(port)


class Receivers:
    """The healthy destination's receiver and, when `mode` is given, its neighbour's: a
    process each."""

    def __init__(self, mode: str | None) -> None:
        self.process, self.healthy = start_receiver("healthy")
        self.processes = [self.process]
        self.neighbour: int | None = None  # its port
        if mode:
            process, self.neighbour = start_receiver(mode)
            self.processes.append(process)

    async def stats(self, what: str = "stats", port: int | None = None) -> dict:
        """The healthy receiver's `what`, or the neighbour's at `port` (its count)."""
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port or self.healthy}/{what}") as answer:
                return await answer.json()

    async def reset(self) -> None:
        async with aiohttp.ClientSession() as session:
            await session.post(f"http://127.0.0.1:{self.healthy}/reset")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait()


async def wait_for(receivers: Receivers, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while (await receivers.stats("count"))["count"] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the receiver did not get {count} deliveries")
        await asyncio.sleep(0.2)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 10) - 1] * 1000 if len(values) > 10 else float("nan")


class Replicas:
    """Delivery replicas (bench/_delivery_workers.py), each a process with the workers of the
    destinations named, all reading the same queues."""

    def __init__(self, count: int, nats_url: str, data_dir: str, consent_port: int, ports: dict[str, int]) -> None:
        command = [sys.executable, "-m", "bench._delivery_workers", nats_url, data_dir, str(consent_port)]
        command += [f"{d}={port}" for d, port in ports.items()]
        self.processes = [
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(count)
        ]
        for line in self._answers():
            assert line == "ready", line

    def _answers(self) -> list[str]:
        return [process.stdout.readline().strip() for process in self.processes]  # type: ignore[union-attr]

    async def command(self, word: str) -> list[str]:
        for process in self.processes:
            process.stdin.write(word + "\n")  # type: ignore[union-attr]
            process.stdin.flush()  # type: ignore[union-attr]
        return await asyncio.to_thread(self._answers)

    async def start(self) -> None:
        await self.command("start")

    async def stop(self) -> dict:
        """Stop every replica's workers; the consent calls made so far and the circuits' states."""
        states = [json.loads(line.removeprefix("stopped ")) for line in await self.command("stop")]
        return {
            "asked": sum(s["asked"] for s in states),
            "calls": sum(s["calls"] for s in states),
            "breakers": {d: "/".join(sorted({s["breakers"][d] for s in states})) for d in states[0]["breakers"]},
        }

    def cpu_seconds(self) -> float:
        return sum(_process.cpu_seconds(process.pid) for process in self.processes)

    def close(self) -> None:
        for process in self.processes:
            process.stdin.close()  # type: ignore[union-attr]
        for process in self.processes:
            process.wait()


async def scenario(
    name: str,
    mode: str | None,
    rate: float | None,
    nats_url: str,
    data_dir: str,
    consent_port: int,
    replicas: int,
    feed_other: bool = False,
    others: dict[str, int] | None = None,
) -> dict:
    receivers = Receivers(mode)
    bus = await Bus.connect(nats_url, "delivery", 8)
    await bus.ensure_streams()
    queue = await JobQueue.connect(nats_url)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    suffix = name.replace(" ", "-").replace(".", "-")
    healthy_id, failing_id = f"healthy-{suffix}", f"failing-{suffix}"
    ports = {healthy_id: receivers.healthy} | ({failing_id: receivers.neighbour} if receivers.neighbour else {})
    pool = Replicas(replicas, nats_url, data_dir, consent_port, ports)
    result: dict = {"name": name}
    try:
        if rate is None:
            pids = {**(others or {}), "receiver": receivers.process.pid}

            def cpu() -> dict[str, float]:
                return {n: _process.cpu_seconds(pid) for n, pid in pids.items()} | {"delivery": pool.cpu_seconds()}

            before = {"asked": 0, "calls": 0}  # the replicas' consent counts run across both phases
            # Twice: the people's consent answers not kept yet, then kept (the same people again).
            for phase in ("first", "again"):
                await receivers.reset()
                await queue_jobs(js, healthy_id, DRAIN, offset=DRAIN if phase == "again" else 0)
                start, was = time.monotonic(), cpu()
                await pool.start()
                await wait_for(receivers, DRAIN)
                elapsed, spent = time.monotonic() - start, cpu()
                state = await pool.stop()
                figures = {"rate": DRAIN / elapsed} | {n: state[n] - before[n] for n in before}
                figures |= {f"{n}_us": (spent[n] - was[n]) / DRAIN * 1e6 for n in spent}
                result[phase], before = figures, {n: state[n] for n in before}
        else:
            await pool.start()
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
                result["failing_pending"] = await queue.pending(failing_id)
                result["reached"] = (await receivers.stats("count", ports[failing_id]))["count"]
                result["breaker"] = (await pool.stop())["breakers"][failing_id]
    finally:
        pool.close()
        await nc.close()
        await queue.close()
        await bus.close()
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
    gc.freeze()  # this process queues the jobs, as the planner would: its collector must not stall it
    server = NatsServer(cores=1).start()
    try:
        with tempfile.TemporaryDirectory(prefix="mosaic-bench-delivery-") as data_dir:
            process, port = start_consent(server.url, data_dir)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            try:
                await _process.wait_serving(channel, process, "consent")
                assert server.process is not None  # started
                await run(server.url, data_dir, port, {"consent": process.pid, "nats": server.process.pid})
            finally:
                await channel.close()
                process.terminate()
                process.wait()
    finally:
        server.close()


def replicas_named(count: int) -> str:
    return f"{count} replica{'s' if count > 1 else ''}"


async def run(nats_url: str, data_dir: str, consent_port: int, others: dict[str, int]) -> None:
    print(
        f"throughput: {DRAIN:,} queued jobs for {min(DRAIN, PEOPLE):,} people drained to one destination, "
        f"twice (consent answers kept {CONSENT_CACHE:.0f} s), by 1 delivery replica"
        + (f" and by {REPLICAS}" if REPLICAS > 1 else "")
        + " (each a process; CPU per delivery of them all):",
        flush=True,
    )
    drained = {}
    for count in sorted({1, REPLICAS}):
        drained[count] = await scenario(
            f"drain {count}", None, None, nats_url, data_dir, consent_port, count, others=others
        )
        for phase, label in (("first", "their answers not kept yet"), ("again", "the same people again")):
            d = drained[count][phase]
            total = sum(d[f"{n}_us"] for n in ("delivery", "consent", "receiver", "nats"))
            print(
                f"  {replicas_named(count) + ', ' + label + ':':<40} {d['rate']:6,.0f} webhook deliveries/s;"
                f" CPU per delivery {d['delivery_us']:4.0f} µs in delivery, {d['consent_us']:3.0f} in consent,"
                f" {d['receiver_us']:3.0f} in the receiver, {d['nats_us']:3.0f} in nats-server ({total:.0f} in all:"
                f" {2e6 / total:,.0f}/s would fill two cores); consent asked about {d['asked']:,} people"
                f" in {d['calls']:,} CheckConsents calls",
                flush=True,
            )
    # A fixed rate compares runs at equal load; by default a share of this run's drain.
    fixed = float(os.environ.get("BENCH_DELIVERY_RATE", 0))
    rate = fixed or round(drained[REPLICAS]["first"]["rate"] * LOAD, -1)
    share = "BENCH_DELIVERY_RATE" if fixed else f"{LOAD:.0%} of {replicas_named(REPLICAS)}' drain"
    print(
        f"latency at {rate:,.0f} deliveries/s offered ({share}) for"
        f" {SECONDS:.0f} s, queue to arrival; {ROUNDS} rounds of five runs back to back, each round starting one run later:"
    )
    labels = {
        "alone": "healthy alone:",
        "queued": "alone, a 2nd queue fed, unread:",
        "200": "beside one that works (200):",
        "500": "beside one that answers 500:",
        "timeout": "beside one that times out:",
    }
    p99s: dict[str, list[float]] = {name: [] for name in labels}
    names = list(labels)
    for round_ in range(1, ROUNDS + 1):
        common = (nats_url, data_dir, consent_port, REPLICAS)
        # Each round starts one run later: none always follows the heaviest (a working neighbour)
        # or always runs first, on a machine whose speed drifts.
        turn = (round_ - 1) % len(names)
        runs = {}
        for name in names[turn:] + names[:turn]:
            mode = name if name in ("200", "500", "timeout") else None
            runs[name] = await scenario(f"{name} {round_}", mode, rate, *common, feed_other=name == "queued")
            p99s[name].append(runs[name]["p99"])
        alone = runs["alone"]
        for name in names:
            run_ = runs[name]
            line = f"  {round_}. {labels[name]:<32} p50 {run_['p50']:7.1f} ms  p99 {run_['p99']:7.1f} ms"
            if name == "queued":
                line += f"  ({(run_['p99'] / alone['p99'] - 1) * 100:+.0f} % p99: the load of queueing twice)"
            elif name != "alone":
                line += (
                    f"  ({(run_['p99'] / alone['p99'] - 1) * 100:+.0f} % p99 vs alone; {run_['reached']:,} requests"
                    f" reached it, its queue holds {run_['failing_pending']:,} jobs, circuit {run_['breaker']})"
                )
            print(line, flush=True)
    if ROUNDS > 1:
        # One round's p99 moves by tens of percent between identical runs on a shared machine;
        # the median over rounds is what a neighbour's effect is read from.
        median = {name: statistics.median(values) for name, values in p99s.items()}

        def versus(name: str, base: str = "alone") -> str:
            return f"{(median[name] / median[base] - 1) * 100:+.0f} %"

        def against(name: str) -> str:
            return f"{versus(name)} vs alone, {versus(name, 'queued')} vs its queue fed unread, {versus(name, '200')} vs working"

        print(
            f"  median p99 over the {ROUNDS} rounds: alone {median['alone']:.1f} ms; a 2nd queue fed, unread"
            f" {median['queued']:.1f} ms ({versus('queued')}); beside one that works {median['200']:.1f} ms"
            f" ({versus('200')} vs alone, {versus('200', 'queued')} vs its queue fed unread); beside one that"
            f" answers 500 {median['500']:.1f} ms ({against('500')}); beside one that times out"
            f" {median['timeout']:.1f} ms ({against('timeout')})",
            flush=True,
        )
