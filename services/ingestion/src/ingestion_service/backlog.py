"""Backpressure: past a configured backlog downstream, ingestion stops accepting for a while.

JetStream is the buffer between ingestion and the services that consume its events, but a
buffer that grows without bound only hides an overload until the disk fills. The backlog of
a consuming service is what its durable consumers of a stream have not acked yet (pending
plus in flight, summed over its partitions, `<service>-<partition>`); the gauge reads every
consumer of `events.raw` and `events.resolved` each `refresh` seconds and keeps the largest
service backlog. While it is over `limit`, `check` raises `Unavailable` with a retry hint:
HTTP senders get 503 with `Retry-After`, gRPC callers UNAVAILABLE with `RetryInfo`, and the
SDKs retry, so nothing is lost, only delayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

import nats

from mosaic.platform import topics
from mosaic.platform.errors import Unavailable

log = logging.getLogger("ingestion.backlog")
WATCHED = (topics.EVENTS_RAW, topics.EVENTS_RESOLVED)


class BacklogGauge:
    def __init__(self, nats_url: str, limit: int, refresh: float, retry_after: float) -> None:
        self.nats_url = nats_url
        self.limit = limit  # 0: no bound
        self.refresh = refresh
        self.retry_after = retry_after
        self.backlog = 0
        self.worst = ""  # the consuming service furthest behind
        self._task: asyncio.Task[None] | None = None
        self._nc: nats.NATS | None = None
        self._stopping = asyncio.Event()

    def check(self) -> None:
        """Raise Unavailable while the backlog is over the limit."""
        if self.limit and self.backlog > self.limit:
            raise Unavailable(
                "pipeline",
                f"{self.worst} is {self.backlog} events behind (limit {self.limit}); retry later",
                retry_after=self.retry_after,
            )

    async def start(self) -> None:
        if not self.limit:
            return
        self._nc = await nats.connect(self.nats_url, max_reconnect_attempts=-1)
        await self.read()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        # The flag as well as the cancel: Python 3.11's wait_for (inside nats-py's requests) can
        # swallow a cancellation that lands as its answer arrives, and the loop would go on.
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._nc is not None:
            with contextlib.suppress(ConnectionError, nats.errors.Error):  # NATS already gone
                await self._nc.close()

    async def read(self) -> None:
        """Read every watched consumer once; the largest backlog of one service wins."""
        js = self._nc.jetstream()
        behind: dict[str, int] = defaultdict(int)
        for topic in WATCHED:
            for info in await js.consumers_info(topic.stream):
                service = (info.name or "").rpartition("-")[0] or info.name or "?"
                behind[f"{service} on {topic.name}"] += info.num_pending + info.num_ack_pending
        worst = max(behind.items(), key=lambda item: item[1], default=("", 0))
        was_over = self.backlog > self.limit
        self.worst, self.backlog = worst
        if (self.backlog > self.limit) != was_over:
            log.warning(
                "backlog %s the limit: %s is %d events behind (limit %d)",
                "over" if not was_over else "back under",
                self.worst,
                self.backlog,
                self.limit,
            )

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.refresh)
                return
            try:
                await self.read()
            except Exception as error:  # noqa: BLE001 - NATS away: keep the last reading, the bus reports it
                log.info("could not read the backlog: %r", error)
