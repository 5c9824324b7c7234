"""What per-key subjects cost nats-server in memory, per distinct subject a stream holds.

A message's subject is `<topic>.<partition>.<key token>` (so an erasure finds one person's
messages through the stream's subject index), which makes a stream hold about one subject per
profile instead of one per partition, and nats-server indexes every subject of a stream. Here the
same messages go to two fresh servers, once each on its own subject and once on 8 (the old
scheme's partitions); the difference in resident memory, divided by the subjects, is the price
of one (see README.md, "Erasure in the streams"). And what erasing one key's messages takes
among all those subjects (each found through the subject index, then securely deleted).
Run: `uv run --frozen python -m bench subjects` (BENCH_SUBJECTS sets the count, 100,000 by default).
"""

from __future__ import annotations

import asyncio
import os
import time

import nats
from nats.js import api

from bench.dedup import rss_bytes
from mosaic.platform import streams, topics
from mosaic.testing.nats_server import NatsServer

MESSAGES = int(os.environ.get("BENCH_SUBJECTS", "100000"))
PAYLOAD = b"x" * 560
TOPIC = topics.EVENTS_RESOLVED


async def fill(distinct: int) -> tuple[int, float]:
    """Publish MESSAGES messages over `distinct` keys to a fresh server; its resident memory after
    a pause, and the seconds erasing one key's messages took."""
    server = NatsServer(cores=1).start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(
            api.StreamConfig(name=TOPIC.stream, subjects=[TOPIC.wildcard], storage=api.StorageType.FILE)
        )
        for start in range(0, MESSAGES, 1000):
            futures = []
            for i in range(start, min(start + 1000, MESSAGES)):
                key = f"profile-{i % distinct:08d}"
                futures.append(await js.publish_async(TOPIC.subject(topics.partition_of(key, 8), key), PAYLOAD))
            await asyncio.gather(*futures)
        info = await js.stream_info(TOPIC.stream)
        assert info.state.messages == MESSAGES
        time.sleep(3)  # the server settles (block writes, a collection) before it is read
        assert server.process is not None
        rss = rss_bytes(server.process.pid)
        started = time.perf_counter()
        erased = await streams.erase_subjects(js, TOPIC.stream, TOPIC.key_subjects(f"profile-{7:08d}"))
        seconds = time.perf_counter() - started
        assert erased == MESSAGES // distinct
        await nc.close()
        return rss, seconds
    finally:
        server.close()


async def main() -> None:
    many, erase_one = await fill(MESSAGES)
    few, _ = await fill(8)
    per_subject = (many - few) / MESSAGES
    print(
        f"nats-server resident memory after {MESSAGES:,} messages: {many / 2**20:,.0f} MiB on "
        f"{MESSAGES:,} subjects, {few / 2**20:,.0f} MiB on 8"
    )
    print(
        f"  one subject: {per_subject:,.0f} bytes; a stream holding 1,000,000 profiles' messages: "
        f"{per_subject * 1_000_000 / 2**20:,.0f} MiB"
    )
    print(f"  erasing one key's message among {MESSAGES:,} subjects: {erase_one * 1000:,.1f} ms")
