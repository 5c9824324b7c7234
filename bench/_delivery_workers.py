"""One delivery replica's sending half, in a process of its own, as a deployment runs it:
`python -m bench._delivery_workers <nats url> <data dir> <consent port> <id>=<port> ...`.

The delivery service's `Dispatcher` with a `DestinationWorker` per destination named (webhook
to 127.0.0.1:<port>), over the replicas' shared store file (the embedded store, as replicas on
one machine share it), the consent answers kept by this process and its erased people, as the
delivery service builds them. Every
replica's workers read the same durable consumer per destination, so the replicas share each
queue. Commands on stdin, each answered with one line on stdout once done:

- `start`: a new pool of workers starts taking jobs (`started`);
- `stop`: the pool stops, after recording and acking what it holds (`stopped <json>`: the
  consent calls made so far and each worker's circuit state);
- end of input: stops and exits.

Prints `ready` once connected, with the consent answers kept across pools.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import grpc

from delivery_service.consent import Answers
from delivery_service.dispatcher import Dispatcher
from delivery_service.jobs import JobQueue
from delivery_service.privacy import ErasedPeople
from delivery_service.ssrf import AddressPolicy
from delivery_service.store import open_store
from delivery_service.worker import WorkerSettings
from mosaic.consent.v1 import consent_service_pb2_grpc
from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.config import PlatformSettings
from mosaic.platform.server import tune_gc

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


async def main(nats_url: str, data_dir: str, consent_port: int, destinations: list[tuple[str, int]]) -> None:
    store = await open_store(PlatformSettings.from_env("delivery", {"MOSAIC_AUTH": "off", "MOSAIC_DATA_DIR": data_dir}))
    bus = await Bus.connect(nats_url, "delivery", 8)
    queue = await JobQueue.connect(nats_url)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{consent_port}")
    answers = Answers(consent_service_pb2_grpc.ConsentServiceStub(channel), CONSENT_CACHE)
    await bus.listen(topics.CONSENT_CHANGED, answers.on_changed)
    erased = ErasedPeople(store)
    await erased.follow(bus)
    settings = WorkerSettings(policy=AddressPolicy(["loopback"]), max_attempts=5, retry_base=0.5)
    dispatcher = Dispatcher(queue, store, bus, settings, answers, erased)  # as the service runs its pools
    tune_gc()  # as the service does once started
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    try:
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            if line == "start":
                dispatcher.update({d: destination(d, port) for d, port in destinations})
                print("started", flush=True)
            elif line == "stop":
                breakers = {d: w.breaker.state for d, w in dispatcher.workers.items()}
                await dispatcher.close()
                state = {"asked": answers.misses, "calls": answers.calls, "breakers": breakers}
                print("stopped", json.dumps(state), flush=True)
    finally:
        await dispatcher.close()
        await channel.close()
        await queue.close()
        await bus.close()
        await store.close()


if __name__ == "__main__":
    url, directory, port, *named = sys.argv[1:]
    pairs = [(name, int(p)) for name, _, p in (n.partition("=") for n in named)]
    asyncio.run(main(url, directory, int(port), pairs))
