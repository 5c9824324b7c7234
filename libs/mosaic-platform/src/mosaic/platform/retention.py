"""Retention: how long a service keeps each kind of data, applied where the data is written,
and reported by `mosaic.retention.v1.RetentionService`.

A kind (`events`, `snapshots`, `deliveries`, `dead_letters`) has a duration in days from its
setting (0: kept until the person is erased). On Cassandra every write of the kind carries
`USING TTL` with it, so the node drops rows on its own. The embedded store writes an
`expires_us` column instead, its reads skip rows past it, and the service's sweeper deletes
them every `MOSAIC_RETENTION_SWEEP_SECONDS` (3600). Either way a row lives its retention from
its last write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf import duration_pb2, timestamp_pb2

from mosaic.platform.config import ConfigError, Env
from mosaic.retention.v1 import retention_service_pb2 as pb
from mosaic.retention.v1 import retention_service_pb2_grpc

log = logging.getLogger("mosaic.retention")
DAY = 86400
Sweep = Callable[[int], Awaitable[dict[str, int]]]


@dataclass(frozen=True)
class Kind:
    """One kind of data kept for a while."""

    name: str
    setting: str
    days: float
    tables: tuple[str, ...]

    @property
    def seconds(self) -> int:
        """The TTL of a write: 0 keeps it (Cassandra's TTL 0 is none)."""
        return int(self.days * DAY)

    def expires_us(self, now_us: int) -> int | None:
        """The embedded store's expiry of a row written at `now_us`; None when it is kept."""
        return now_us + self.seconds * 1_000_000 if self.seconds else None


def days(env: Env, variable: str, default: float, at_least: float = 0.0) -> float:
    """A retention in days: 0 (kept), or at least `at_least` days, for the reason the caller has."""
    value = env.float(variable, default)
    if value and value < at_least:
        raise ConfigError(variable, f"must be 0 (kept) or at least {at_least:g} days, got {value:g}")
    return value


def now_us() -> int:
    return time.time_ns() // 1000


class Retention(retention_service_pb2_grpc.RetentionServiceServicer):
    """A service's kinds, the sweeper of its embedded store and the report."""

    def __init__(self, service: str, store: str, kinds: tuple[Kind, ...], sweep: Sweep | None, interval: float) -> None:
        self.service = service
        self.store = store
        self.kinds = {kind.name: kind for kind in kinds}
        self.sweep = sweep  # None on Cassandra: its TTLs do the work
        self.interval = interval
        self.last_swept: int | None = None
        self.swept: dict[str, int] = dict.fromkeys(self.kinds, 0)

    def ttl(self, kind: str) -> int:
        return self.kinds[kind].seconds

    def expires_us(self, kind: str, at_us: int | None = None) -> int | None:
        return self.kinds[kind].expires_us(now_us() if at_us is None else at_us)

    async def sweep_once(self) -> dict[str, int]:
        """Delete what expired (embedded store); rows removed by kind."""
        if self.sweep is None:
            return {}
        at = now_us()
        removed = await self.sweep(at)
        self.last_swept = at
        for kind, count in removed.items():
            self.swept[kind] = self.swept.get(kind, 0) + count
        if any(removed.values()):
            log.info("retention swept", extra={"fields": {"service": self.service, **removed}})
        return removed

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.sweep_once()
            except Exception:  # noqa: BLE001 - logged; the next round tries again
                log.exception("retention sweep failed")
            try:
                await asyncio.wait_for(stopping.wait(), self.interval)
            except TimeoutError:
                pass

    async def GetRetention(self, request, context):  # noqa: N802 - gRPC's name
        now = now_us()
        answer = pb.GetRetentionResponse(service=self.service, store=self.store)
        for kind in self.kinds.values():
            entry = answer.kinds.add(kind=kind.name, tables=kind.tables, setting=kind.setting)
            entry.mechanism = (
                "kept until the person is erased"
                if not kind.seconds
                else "Cassandra TTL on every write"
                if self.sweep is None
                else f"expiry column, hidden from reads once past, deleted by the sweeper every {self.interval:g} s"
            )
            if kind.seconds:
                entry.retention.CopyFrom(duration_pb2.Duration(seconds=kind.seconds))
                entry.expires_before.CopyFrom(_timestamp(now - kind.seconds * 1_000_000))
            if self.last_swept is not None:
                entry.last_swept.CopyFrom(_timestamp(self.last_swept))
            entry.swept_rows = self.swept.get(kind.name, 0)
        return answer


def _timestamp(us: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMicroseconds(us)
    return stamp


def serve(runtime, retention: Retention) -> None:
    """Serve the report and start the sweeper (stopped with the service)."""
    retention_service_pb2_grpc.add_RetentionServiceServicer_to_server(retention, runtime.server)
    runtime.add_service(pb.DESCRIPTOR.services_by_name["RetentionService"].full_name)
    stopping = asyncio.Event()
    task = asyncio.create_task(retention.run(stopping))

    async def stop() -> None:
        stopping.set()
        await task

    runtime.cleanup.push_async_callback(stop)
