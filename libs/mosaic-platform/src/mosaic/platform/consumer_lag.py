"""Consumer lag per durable and partition, and dead letters, read from JetStream.

A service replica polls the info of its own durables (`<service>-<partition>` on every stream,
the partitions it holds now) and the DEAD_LETTERS stream's count of its subjects, every
`interval` seconds and as soon as it takes partitions over, and keeps the answers in memory; the
observable gauges of `metrics` (`mosaic.consumer.lag`, `.in_flight`, `.redelivered`,
`.delivered`, `mosaic.dead_letters.stored`) read that copy, since an export or a scrape runs on
another thread and must not wait on NATS. Each replica reports only the partitions it holds at
the moment of the scrape, so summing over replicas counts each partition once, whichever replica
holds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from mosaic.platform import metrics, tasks, topics

log = logging.getLogger("mosaic.consumer_lag")


@dataclass(frozen=True)
class DurableState:
    """What JetStream says of one durable consumer."""

    stage: str
    topic: str
    partition: int
    pending: int
    in_flight: int
    redelivered: int
    delivered: int


class ConsumerLag:
    """Polls one replica's durables and dead letters; `start` once serving, `stop` at shutdown.
    `owned` gives the partitions the replica holds now (they change as replicas come and go)."""

    def __init__(
        self,
        nats_url: str,
        service: str,
        owned: Callable[[], Iterable[int]],
        interval: float = 15.0,
        secure: Mapping[str, Any] | None = None,
    ) -> None:
        self.nats_url = nats_url
        self.secure = dict(secure or {})  # TLS and credentials, as the bus connects
        self.service = service
        self.owned = owned
        self.interval = interval
        self.durables: dict[tuple[str, int], DurableState] = {}
        self.dead_letters: int | None = None
        self._nc: nats.NATS | None = None
        self._task: asyncio.Task[None] | None = None
        self._soon = asyncio.Event()

    async def acquired(self, partitions: frozenset[int]) -> None:
        """Partitions taken over: read their durables now rather than at the next interval."""
        self._soon.set()

    def current(self) -> list[DurableState]:
        """The durables of the partitions held now (a partition handed over drops out at once)."""
        owned = set(self.owned())
        return [state for state in list(self.durables.values()) if state.partition in owned]

    async def start(self) -> None:
        # A connection of its own: the bus's is busy with the work, and this one may be slow.
        self._nc = await nats.connect(
            self.nats_url,
            name=f"{self.service}-lag",
            connect_timeout=5,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            **self.secure,
        )
        await self.poll()
        self._task = asyncio.create_task(self._loop())
        _ACTIVE.add(self)

    async def stop(self) -> None:
        _ACTIVE.discard(self)
        await tasks.cancel(self._task)
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._soon.wait(), self.interval)
                await asyncio.sleep(0.5)  # the new consumers have made their durables by then
            except asyncio.TimeoutError:
                pass
            self._soon.clear()
            try:
                await self.poll()
            except (nats.errors.Error, asyncio.TimeoutError) as error:
                log.warning("consumer lag not read: %r", error)  # the last values stay

    async def poll(self) -> None:
        """Read every owned durable's state and the count of this service's dead letters."""
        assert self._nc is not None
        js = self._nc.jetstream(timeout=5)
        states = await read_durables(js, self.service, frozenset(self.owned()))
        self.durables = {(state.topic, state.partition): state for state in states}
        self.dead_letters = (await read_dead_letters(js)).get(self.service, 0)


async def read_durables(
    js: JetStreamContext,
    service: str | None = None,
    partitions: frozenset[int] | None = None,
    streams: Iterable[topics.Topic] = topics.ALL,
) -> list[DurableState]:
    """The state of every durable `<service>-<partition>` on the mesh's streams (all services
    when `service` is None; all partitions when `partitions` is None), in stream order. Other
    consumers (an ephemeral reader, a debugging tool) are not a stage and are left out."""
    found: list[DurableState] = []
    for topic in streams:
        try:
            consumers = await js.consumers_info(topic.stream)
        except nats.js.errors.NotFoundError:
            continue  # not declared yet
        for info in consumers:
            stage, _, suffix = (info.name or "").rpartition("-")
            if not stage or not suffix.isdigit() or (service is not None and stage != service):
                continue
            if partitions is not None and int(suffix) not in partitions:
                continue
            found.append(
                DurableState(
                    stage=stage,
                    topic=topic.name,
                    partition=int(suffix),
                    pending=info.num_pending or 0,
                    in_flight=info.num_ack_pending or 0,
                    redelivered=info.num_redelivered or 0,
                    delivered=(info.delivered.consumer_seq or 0) if info.delivered else 0,
                )
            )
    return found


async def read_dead_letters(js: JetStreamContext) -> dict[str, int]:
    """Messages in DEAD_LETTERS by the service that gave up on them (deadletter.<service>.<subject>)."""
    try:
        stream = await js.stream_info(topics.DEAD_LETTER_STREAM, subjects_filter=topics.DEAD_LETTER_SUBJECTS)
    except nats.js.errors.NotFoundError:
        return {}
    counts: dict[str, int] = {}
    for subject, count in (stream.state.subjects or {}).items():
        service = subject.split(".")[1] if subject.count(".") >= 2 else ""
        counts[service] = counts.get(service, 0) + count
    return counts


# The collectors running in this process (one per service; tests may run several).
_ACTIVE: set[ConsumerLag] = set()


def _durables(field: str) -> list[tuple[float, Mapping[str, str | int]]]:
    return [
        (
            getattr(state, field),
            {
                "messaging.consumer.group.name": state.stage,
                "messaging.destination.name": state.topic,
                "mosaic.partition": state.partition,
            },
        )
        for collector in list(_ACTIVE)
        for state in collector.current()
    ]


def _dead_letters() -> list[tuple[float, Mapping[str, str | int]]]:
    return [
        (collector.dead_letters, {"messaging.consumer.group.name": collector.service})
        for collector in list(_ACTIVE)
        if collector.dead_letters is not None
    ]


metrics.observe("mosaic.consumer.lag", lambda: _durables("pending"))
metrics.observe("mosaic.consumer.in_flight", lambda: _durables("in_flight"))
metrics.observe("mosaic.consumer.redelivered", lambda: _durables("redelivered"))
metrics.observe("mosaic.consumer.delivered", lambda: _durables("delivered"))
metrics.observe("mosaic.dead_letters.stored", _dead_letters)
