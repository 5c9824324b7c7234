"""What JetStream's duplicate window costs nats-server in memory, per message id it holds.

`events.raw` is declared with `MOSAIC_EVENTS_DEDUP_WINDOW_SECONDS` (24 h by default) as its
duplicate window, and nats-server keeps every message id of that window in memory. Here the
same messages go to two fresh servers, once with a `Nats-Msg-Id` like ingestion's
(`source:messageId`) and once without; the difference in resident memory, divided by the
ids, is the price of one id. Multiplied by a deployment's event rate and window, it is what
the NATS servers need beyond their other memory (see deploy/k8s/README.md).
Run: `uv run --frozen python -m bench dedup` (BENCH_IDS sets the count, 1,000,000 by default).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import nats
from nats.js import api

from mosaic.testing.nats_server import NatsServer

IDS = int(os.environ.get("BENCH_IDS", "1000000"))
PAYLOAD = b"x" * 560
WINDOW = 24 * 3600.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def fill(with_ids: bool) -> int:
    """Publish IDS messages to a fresh server; its resident memory after a pause."""
    server = NatsServer(cores=1).start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(
            api.StreamConfig(
                name="EVENTS_RAW", subjects=["events.raw.*"], storage=api.StorageType.FILE, duplicate_window=WINDOW
            )
        )
        for start in range(0, IDS, 1000):
            futures = [
                await js.publish_async(
                    f"events.raw.{i % 8}",
                    PAYLOAD,
                    headers={"Nats-Msg-Id": f"web-shop:{start + i:08d}-6f1c2a9e-4b7d-4c1e-9a53"} if with_ids else None,
                )
                for i in range(start, min(start + 1000, IDS))
            ]
            await asyncio.gather(*futures)
        await nc.close()
        time.sleep(3)  # the server settles (block writes, a collection) before it is read
        assert server.process is not None
        return rss_bytes(server.process.pid)
    finally:
        server.close()


async def main() -> None:
    with_ids = await fill(True)
    without = await fill(False)
    per_id = (with_ids - without) / IDS
    print(
        f"nats-server resident memory after {IDS:,} messages in a {WINDOW / 3600:.0f} h window: "
        f"{with_ids / 2**20:,.0f} MiB with message ids, {without / 2**20:,.0f} MiB without"
    )
    print(
        f"  one id in the duplicate window: {per_id:,.0f} bytes; a day of ids at 1,000 events/s: "
        f"{per_id * 1000 * 86400 / 2**30:,.1f} GiB"
    )
