"""What the bus costs a service per message, apart from any work of its own (issue 19).

Every event crosses five consumers (identity, profile, consent, delivery, segmentation) and two
publishes, so the bus's own work per message is paid about seven times an event. Here one
process publishes BENCH_MESSAGES messages of the pipeline's size over the bus's
`publish_many` (batches of 100, as identity and profile publish a fetched batch), then consumes
them with the bus's partition consumers and a batch handler that does nothing, as consent and
delivery do with most events; BENCH_ROUNDS times. It prints the CPU time per message of this
process (the client library, the bus's parsing, spans, deliveries and acks) and of nats-server,
for each side: the best round and the median. This machine's speed moves from minute to minute
(other tenants), so the best round is the figure to compare between two versions of the code.
Run: `uv run --frozen python -m bench consumer`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
import uuid

from bench import _process
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.testing.nats_server import NatsServer

MESSAGES = int(os.environ.get("BENCH_MESSAGES", "10000"))  # a round's
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
PARTITIONS = 8


def _payload(i: int) -> tuple[str, bytes, str]:
    person = f"person-{i % 5000}"
    event = event_pb2.Event(
        message_id=f"{uuid.uuid4()}", type=event_pb2.EVENT_TYPE_TRACK, event="Product Viewed", source_id="bench"
    )
    event.properties.update({"product_id": f"p-{i % 300}", "price": 19.99, "category": "shoes"})
    resolved = resolved_pb2.ResolvedEvent(profile_id=person, event=event)
    return person, resolved.SerializeToString(), event.message_id


class Meter:
    """CPU per message of this process and of nats-server over one phase of a round."""

    def __init__(self, nats_pid: int) -> None:
        self.nats_pid = nats_pid
        self.figures: list[tuple[float, float]] = []

    def start(self) -> None:
        self._cpu, self._nats = time.process_time(), _process.cpu_seconds(self.nats_pid)

    def stop(self) -> None:
        here = (time.process_time() - self._cpu) / MESSAGES * 1e6
        self.figures.append((here, (_process.cpu_seconds(self.nats_pid) - self._nats) / MESSAGES * 1e6))

    def report(self, what: str) -> None:
        here = sorted(f[0] for f in self.figures)
        there = sorted(f[1] for f in self.figures)
        print(
            f"{what}, CPU per message over {len(here)} rounds of {MESSAGES:,}: this process best {here[0]:.1f} µs,"
            f" median {statistics.median(here):.1f} µs; nats-server best {there[0]:.1f} µs, median"
            f" {statistics.median(there):.1f} µs",
            flush=True,
        )


async def main() -> None:
    server = NatsServer(cores=1).start()
    try:
        bus = await Bus.connect(server.url, "bench", PARTITIONS)
        await bus.ensure_streams([topics.EVENTS_RESOLVED])
        assert server.process is not None
        published, consumed = Meter(server.process.pid), Meter(server.process.pid)
        for _ in range(ROUNDS):
            messages = [_payload(i) for i in range(MESSAGES)]
            gc.collect()
            published.start()
            for start in range(0, MESSAGES, 100):
                await bus.publish_many(topics.EVENTS_RESOLVED, messages[start : start + 100])
            published.stop()
            await consume(bus, consumed)  # the round's messages as a backlog, the consumers alone
        await bus.close()
        published.report("publish_many, batches of 100")
        consumed.report("consume, a batch handler that does nothing")
    finally:
        server.close()


async def consume(bus: Bus, meter: Meter) -> None:
    seen = 0
    done = asyncio.Event()

    async def nothing(items: list) -> None:
        nonlocal seen
        seen += len(items)
        if seen >= MESSAGES:
            done.set()

    async def one(payload: object, delivery: object) -> None:
        raise AssertionError("a batch handler that does nothing never fails")

    gc.collect()
    meter.start()
    bus.consume(topics.EVENTS_RESOLVED, one, partitions=range(PARTITIONS), batch_handler=nothing)
    await asyncio.wait_for(done.wait(), timeout=600)
    meter.stop()  # before the stop: its waits for the fetches in hand are not the messages' work
    await bus.stop_consuming()
