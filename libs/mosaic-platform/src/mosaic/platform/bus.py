"""The JetStream bus, the one entry point services use: streams declared at start, traced
publishes, ordered durable consumers, a plain subscription for notices.

Each job has its module: `streams` (declaring streams, erasing a message), `publisher`
(publishing and its confirmation), `consumer` (the ordered consumer of a partition), and
`failures` (what becomes of a message its handler failed on); `nats_connection` connects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry.context import Context

from mosaic.platform import acks, nats_connection, streams, topics
from mosaic.platform.config import TlsSettings
from mosaic.platform.consumer import FETCH_SECONDS, BatchHandler, Consumer, Delivery, Handler, Run, Settings
from mosaic.platform.failures import backoff
from mosaic.platform.nats_connection import NATS_DOWN, nats_security
from mosaic.platform.publisher import KEY_HEADER, Publisher
from mosaic.platform.topics import Topic

if TYPE_CHECKING:
    from mosaic.platform.ownership import Lease

# What services import from here, wherever it is defined.
__all__ = [
    "FETCH_SECONDS",
    "KEY_HEADER",
    "BatchHandler",
    "Bus",
    "Delivery",
    "Handler",
    "backoff",
    "nats_security",
]

log = logging.getLogger("mosaic.bus")


class Bus:
    """A service's connection to JetStream."""

    def __init__(self, nc: nats.NATS, service: str, partitions: int, stream_replicas: int = 1) -> None:
        self._nc = nc
        self.stream_replicas = stream_replicas
        self._js = nc.jetstream()
        self._publisher = Publisher(nc, partitions)
        self.service = service
        self.partitions = partitions
        self._reconnect_hooks: list[Callable[[], Awaitable[None]]] = []
        # What `consume` registered without partitions: run on the partitions the replica holds.
        self._consumers: list[tuple[Topic, Handler, BatchHandler | None]] = []
        self._runs: dict[int, Run] = {}  # the held partitions being consumed
        self._named: list[Run] = []  # partitions named to `consume`
        # Short, so a crashed replica's messages come back quickly; a slow handler keeps its
        # message with progress heartbeats. Read by each consumer when it starts.
        self.ack_wait = 10.0
        self.max_deliver = 10
        # Messages per fetch, so per batch handler call: a read and a write of the store, a
        # publish and a fetch per batch are spread over up to 256 messages. Against 64, the
        # pipeline bench's services took ~15 % less CPU an event and nats-server ~25 % less
        # (two pairs of runs); 512 saved no more and raised latency.
        self.batch = 256

    @classmethod
    async def connect(
        cls,
        url: str,
        service: str,
        partitions: int,
        stream_replicas: int = 1,
        tls: TlsSettings | None = None,
        credentials: str = "",
        deadline: float = 15.0,
    ) -> Bus:
        """Connect, reconnecting forever once connected; fails fast if never reachable. With
        `tls`, the server's certificate is verified (and ours presented); `credentials` is a
        .creds file (user JWT and nkey). A server that never completes the handshake (plaintext
        against a TLS server does that) is Unavailable after `deadline` seconds."""
        hooks: list[Callable[[], Awaitable[None]]] = []
        running: set[asyncio.Task[None]] = set()  # held here, so none is collected mid-way

        def reconnected() -> None:
            for hook in hooks:
                task = asyncio.ensure_future(hook())
                running.add(task)
                task.add_done_callback(running.discard)

        nc = await nats_connection.connect(url, service, tls, credentials, deadline, reconnected)
        bus = cls(nc, service, partitions, stream_replicas)
        bus._reconnect_hooks = hooks
        return bus

    def on_reconnect(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` (as a task of its own) each time the connection is back after a loss: what
        `listen` missed meanwhile is lost, and a cache kept by it may need to start again. Only
        a bus made by `connect` calls it."""
        self._reconnect_hooks.append(hook)

    @property
    def connected(self) -> bool:
        """Whether the connection to NATS is up now (not reconnecting or closed)."""
        return self._nc.is_connected

    @property
    def jetstream(self) -> JetStreamContext:
        """The JetStream context, for readers of a stream that are not consumers (the audit log)."""
        return self._js

    async def ensure_streams(self, wanted: Iterable[Topic] = topics.ALL, max_messages: int = 0) -> None:
        """Create or update the streams (see `streams.ensure`); safe from every replica at every start."""
        await streams.ensure(self._js, wanted, max_messages, self.stream_replicas)

    async def publish(self, topic: Topic, key: str, message: Message, message_id: str) -> bool:
        """Store `message` on the key's partition; True when JetStream saw it as a duplicate.

        Raises `Unavailable` when NATS does not confirm the write, so the caller never
        reports success for an event that is not stored.
        """
        (duplicate,) = await self.publish_many(topic, [(key, message.SerializeToString(), message_id)])
        return duplicate

    async def publish_many(
        self,
        topic: Topic,
        messages: Sequence[tuple[str, bytes, str]],
        timeout: float = 5.0,
        contexts: Sequence[Context | None] | None = None,
    ) -> list[bool]:
        """Store many `(key, payload, message id)` at once; True where JetStream saw a duplicate.

        All messages are sent before any acknowledgement is awaited, so a batch costs about one
        round trip instead of one per message. Without `contexts` one span (whose trace context
        every message carries) covers them all; with them (one per message, from a batch
        handler's deliveries) each message gets its own publish span under its own context, so
        every event stays one trace across a batched hop. The acknowledgements come to one
        subscription of this bus (see `Acks`), cheaper per message than the client's own async
        publish. Raises `Unavailable` unless JetStream confirmed every message: some may be
        stored anyway, and the caller's retry is safe because the message ids make JetStream
        drop the copies.
        """
        answers = await self._publisher.publish_many(topic, messages, timeout, contexts)
        return [acks.duplicate(answer) for answer in answers]

    async def publish_many_sequenced(
        self,
        topic: Topic,
        messages: Sequence[tuple[str, bytes, str]],
        timeout: float = 5.0,
        contexts: Sequence[Context | None] | None = None,
    ) -> list[int]:
        """As `publish_many`, giving each message's stream sequence instead (a duplicate's is its
        original's): for a writer that tells readers how far to read. Each answer is parsed, which
        `publish_many` spares its callers."""
        answers = await self._publisher.publish_many(topic, messages, timeout, contexts)
        return [acks.sequence(answer) for answer in answers]

    async def erase(self, topic: Topic, sequence: int) -> None:
        """Delete a consumed message from its stream, its bytes overwritten on disk (JetStream's
        secure delete): for messages that must not outlive their use. One already gone is fine."""
        await streams.erase(self._js, topic, sequence)

    async def erase_keys(self, topic: Topic, keys: Iterable[str]) -> int:
        """Erase every message of these keys from the topic's stream, each as `erase` does, found
        by its subject (the key's token, `Topic.key_subjects`); how many there were."""
        return sum([await streams.erase_subjects(self._js, topic.stream, topic.key_subjects(key)) for key in keys])

    async def erase_dead_letters(self, topic: Topic, keys: Iterable[str]) -> int:
        """Erase this service's dead letters of the topic's messages of these keys
        (`deadletter.<service>.<subject>`); how many there were."""
        return sum(
            [
                await streams.erase_subjects(
                    self._js, topics.DEAD_LETTER_STREAM, f"deadletter.{self.service}.{topic.key_subjects(key)}"
                )
                for key in keys
            ]
        )

    async def listen(self, topic: Topic, handler: Callable[[Any], None]) -> None:
        """Call `handler` with every message published on `topic` from now on, on every replica.

        A plain NATS subscription: at most once, nothing acknowledged, nothing replayed. It is
        for caches that must hear of changes other replicas made; what it misses while the
        connection is down, a cache has to age out.
        """

        async def on_message(msg: Msg) -> None:
            try:
                handler(topic.message.FromString(msg.data))
            except Exception:  # noqa: BLE001 - a notice that cannot be used is only logged
                log.exception("notice on %s not applied", msg.subject)

        await self._nc.subscribe(topic.wildcard, cb=on_message)
        await self._nc.flush()  # the server knows the subscription when this returns

    def consume(
        self,
        topic: Topic,
        handler: Handler,
        partitions: Iterable[int] | None = None,
        batch_handler: BatchHandler | None = None,
    ) -> None:
        """Consume `topic` with one ordered consumer task per partition: the partitions this
        replica holds (the default: started and stopped with their leases, `start_partition`)
        or the `partitions` named (a test, a benchmark, one process alone).

        With `batch_handler`, each fetched batch goes to it whole, so a handler can read and write
        once per batch instead of once per message; all its messages are acked when it returns.
        If it raises anything, the batch is done again by `handler` one message at a time, where
        each outcome has its answer (retry in place, dead letter, redeliver): safe because
        handlers are idempotent, and it keeps a poison message from holding back the others.
        """
        if partitions is None:
            self._consumers.append((topic, handler, batch_handler))
            for partition, run in self._runs.items():
                self._start(topic, partition, handler, batch_handler, run)
            return
        for partition in partitions:
            run = Run(None)
            self._start(topic, partition, handler, batch_handler, run)
            self._named.append(run)

    def start_partition(self, partition: int, lease: Lease) -> None:
        """Run every registered consumer on a partition whose lease this replica now holds."""
        run = self._runs[partition] = Run(lease)
        for topic, handler, batch_handler in self._consumers:
            self._start(topic, partition, handler, batch_handler, run)

    async def stop_partition(self, partition: int) -> None:
        """Stop a partition's consumers: each finishes the message in hand and gives back the
        rest (once its fetch in hand is over, up to 1.5 s); returns once their acks are flushed
        to the server, so the lease may go."""
        run = self._runs.pop(partition, None)
        if run is None:
            return
        run.stopping.set()
        await asyncio.gather(*run.tasks, return_exceptions=True)
        try:
            await self._nc.flush(timeout=5)
        except (*NATS_DOWN, nats.errors.FlushTimeoutError):
            pass  # what did not reach the server comes back after ack_wait, to the next holder

    async def stop_consuming(self) -> None:
        """Finish the message in hand on each partition, give back the rest, and stop."""
        runs = [*self._runs.values(), *self._named]
        for run in runs:
            run.stopping.set()
        await asyncio.gather(*(task for run in runs for task in run.tasks), return_exceptions=True)
        self._runs.clear()
        self._named.clear()

    async def close(self) -> None:
        """Stop consuming, then drain: pending publishes and acks are flushed before closing."""
        await self.stop_consuming()
        if not self._nc.is_closed:
            try:
                await self._nc.drain()
            except (*NATS_DOWN, nats.errors.FlushTimeoutError):
                await self._nc.close()  # nothing left to flush to: close without draining

    def _start(
        self, topic: Topic, partition: int, handler: Handler, batch_handler: BatchHandler | None, run: Run
    ) -> None:
        settings = Settings(ack_wait=self.ack_wait, max_deliver=self.max_deliver, batch=self.batch)
        consumer = Consumer(self._nc, self._js, self.service, topic, partition, handler, batch_handler, run, settings)
        run.tasks.append(asyncio.create_task(consumer.consume()))
