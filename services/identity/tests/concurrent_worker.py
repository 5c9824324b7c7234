"""One identity process of the concurrency test: resolves its share of the events against the
shared Cassandra keyspace, four at a time (like four partitions), in its own random order.

Usage: python concurrent_worker.py INPUT.json  (written by test_concurrency.py)
"""

import asyncio
import json
import random
import sys
import time

from identity_service.app import components
from identity_service.config import Settings
from identity_service.store import open_store
from mosaic.events.v1 import event_pb2


def build(spec: dict) -> event_pb2.Event:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, message_id=spec["mid"], source_id="test")
    for name in ("user_id", "anonymous_id"):
        if spec.get(name):
            setattr(event, name, spec[name])
    if spec.get("email"):
        event.traits.update({"email": spec["email"]})
    if spec.get("device"):
        event.context.update({"device": {"id": spec["device"]}})
    event.timestamp.FromMilliseconds(spec["at"])
    return event


async def main(path: str) -> None:
    job = json.loads(open(path).read())
    settings = Settings.from_env(job["environ"])
    store = await open_store(settings.platform)
    resolver, _, events = components(store, settings)
    rng = random.Random(job["seed"])
    queue: asyncio.Queue = asyncio.Queue()
    for spec in job["events"]:
        queue.put_nowait(spec)

    async def partition() -> None:
        while not queue.empty():
            spec = queue.get_nowait()
            await asyncio.sleep(rng.random() * 0.003)
            await events.resolve(build(spec))

    while time.time() < job["start_at"]:  # every process starts at once: maximum overlap
        await asyncio.sleep(0.005)
    await asyncio.gather(*(partition() for _ in range(4)))
    await store.close()
    print(json.dumps({"retries": resolver.retries}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
