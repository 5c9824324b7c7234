"""The JetStream bus: streams declared at start, traced publishes, ordered durable consumers.

Publishing: the payload is a protobuf message; `Nats-Msg-Id` carries the message id so
JetStream drops a duplicate within the stream's window, and `traceparent` carries the W3C
trace context so one trace crosses every hop.

Consuming: one durable pull consumer per (service, partition), named `<service>-<partition>`,
run only by the replica that holds the partition's lease (see `mosaic.platform.ownership`,
which starts and stops partitions here). Each fetched batch is split by the key the publisher partitioned by (`Mosaic-Key`): messages
of one key are handled one at a time, in order, different keys concurrently; each message is
acked only after the handler returned, i.e. after its durable write. What the handler raises
decides the rest:

- `Unavailable` (a dependency is down) is retried in place with backoff, keeping the message
  in progress. A nak would let later messages of the same partition overtake it; holding the
  partition keeps per-key order, which is the point of partitioning.
- any other `DomainError`, or a payload that does not parse, is poison: it is copied to the
  DEAD_LETTERS stream with the reason in a header, then terminated.
- any other exception (a bug) is nak'ed with a growing delay and redelivered; after
  `max_deliver` deliveries it is dead-lettered like poison.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
import tenacity
from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from opentelemetry import propagate, trace
from opentelemetry.context import Context

from mosaic.platform import messaging_spans, metrics, retry, topics
from mosaic.platform.acks import Acks, duplicate
from mosaic.platform.config import TlsSettings
from mosaic.platform.errors import DomainError, Unavailable
from mosaic.platform.topics import Topic

if TYPE_CHECKING:
    from mosaic.platform.ownership import Lease

log = logging.getLogger("mosaic.bus")
tracer = trace.get_tracer("mosaic.bus")

_NATS_DOWN = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    asyncio.TimeoutError,
)
# JetStream itself not answering yet (just restarted, or no stream leader): retryable too.
_JETSTREAM_DOWN = (
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.TooManyStalledMsgsError,
)

_NO_MESSAGE = 10057  # JetStream's error code for a sequence that holds no message
_STREAM_FULL = 10077  # a stream at its max_msgs (or max_bytes) with discard NEW, sent as a 503

FETCH_SECONDS = 1.0  # how long one fetch waits for messages
# How much later than its fetch a pull request may expire at the server (it counts from receipt).
EXPIRY_MARGIN_SECONDS = 0.5

# The key a message was partitioned by; consumers keep order per key, not per partition.
KEY_HEADER = "Mosaic-Key"


@dataclasses.dataclass(frozen=True)
class Delivery:
    """Where a consumed message came from."""

    subject: str
    partition: int
    stream_sequence: int
    num_delivered: int
    message_id: str
    key: str = ""  # the key it was partitioned by
    # The context of its process span: a batch handler has no current span per message, so it
    # hands this to `publish_many(contexts=...)` to keep each message's trace going.
    trace_context: Context | None = None


Handler = Callable[[Any, Delivery], Awaitable[None]]
# A handler of a whole fetched batch of one partition, `(payload, delivery)` in stream order; see
# `Bus.consume`. It must leave the same state as the per-message handler applied to each in turn.
BatchHandler = Callable[[list[tuple[Any, Delivery]]], Awaitable[None]]


# Waits between retries of a handler, in place or by redelivery: 0.2 s, 0.4 s, 0.8 s ... 30 s.
BACKOFF_BASE, BACKOFF_CAP = 0.2, 30.0


class _Run:
    """The consumer tasks of one partition, under one lease (none: a partition named to `consume`)."""

    def __init__(self, lease: Lease | None) -> None:
        self.lease = lease
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        # Per topic, the messages taken but not finished, given back when its consumer stops.
        self.unfinished: dict[str, list[Msg]] = {}

    def leave(self, topic: Topic, messages: Iterable[Msg]) -> None:
        self.unfinished.setdefault(topic.name, []).extend(messages)

    def may_ack(self) -> bool:
        """Whether the lease still holds: a clock read, never I/O."""
        return self.lease is None or self.lease.held()

    def active(self) -> bool:
        """Whether to start on more messages: not stopping, and the lease holds (a lapsed one
        stops every consumer of the partition)."""
        if not self.stopping.is_set() and not self.may_ack():
            self.stopping.set()
        return not self.stopping.is_set()


def backoff(attempt: int) -> float:
    return retry.backoff(attempt, BACKOFF_BASE, BACKOFF_CAP)


def nats_security(tls: TlsSettings | None, credentials: str) -> dict[str, Any]:
    """nats.connect's arguments for TLS (verify the server, present our certificate) and a
    .creds file, for every connection a service opens."""
    secure: dict[str, Any] = {}
    if tls is not None and tls.enabled:
        secure = {"tls": tls.context(), "tls_hostname": tls.server_name or None}
    if credentials:
        secure["user_credentials"] = credentials
    return secure


class Bus:
    """A service's connection to JetStream."""

    def __init__(self, nc: nats.NATS, service: str, partitions: int, stream_replicas: int = 1) -> None:
        self._nc = nc
        self.stream_replicas = stream_replicas
        self._js = nc.jetstream()
        self._acks = Acks(nc)
        self.service = service
        self.partitions = partitions
        # What `consume` registered without partitions: run on the partitions the replica holds.
        self._consumers: list[tuple[Topic, Handler, BatchHandler | None]] = []
        self._runs: dict[int, _Run] = {}  # the held partitions being consumed
        self._named: list[_Run] = []  # partitions named to `consume`
        # Short, so a crashed replica's messages come back quickly; a slow handler keeps its
        # message with progress heartbeats (see _with_heartbeat).
        self.ack_wait = 10.0
        self.max_deliver = 10
        self.batch = 64

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
        secure = nats_security(tls, credentials)
        connecting = nats.connect(
            url,
            name=service,
            **secure,
            connect_timeout=5,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=_log_error,
            disconnected_cb=_log_event("disconnected from nats"),
            reconnected_cb=_log_event("reconnected to nats"),
        )
        try:
            nc = await asyncio.wait_for(connecting, deadline)
        except asyncio.TimeoutError:
            raise Unavailable("nats", f"{url} did not complete a connection within {deadline:.0f} s") from None
        return cls(nc, service, partitions, stream_replicas)

    @property
    def connected(self) -> bool:
        """Whether the connection to NATS is up now (not reconnecting or closed)."""
        return self._nc.is_connected

    @property
    def jetstream(self) -> nats.js.JetStreamContext:
        """The JetStream context, for readers of a stream that are not consumers (the audit log)."""
        return self._js

    async def ensure_streams(self, wanted: Iterable[Topic] = topics.ALL, max_messages: int = 0) -> None:
        """Create or update the streams; safe to run from every replica at every start.

        `max_messages` (0: none) bounds each stream. A full stream refuses new messages (discard
        NEW) rather than dropping old ones nobody has consumed yet: the publisher gets
        Unavailable, so ingestion answers 503 with Retry-After and nothing accepted is lost.
        A count, not bytes: nats-server 2.9 checks a byte bound against the payload without the
        record's overhead, stores past it, then trims the oldest messages (measured: accepted
        events lost from the head, test_stream_limits); the message count is checked exactly."""
        configs = [
            api.StreamConfig(
                name=topic.stream,
                subjects=[topic.wildcard],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                max_age=topic.max_age,
                max_msgs=max_messages or None,
                discard=api.DiscardPolicy.NEW,
                duplicate_window=topic.duplicate_window,
                num_replicas=self.stream_replicas,
            )
            for topic in wanted
        ]
        configs.append(
            api.StreamConfig(
                name=topics.DEAD_LETTER_STREAM,
                subjects=[topics.DEAD_LETTER_SUBJECTS],
                storage=api.StorageType.FILE,
                max_age=30 * topics.DAY,
                num_replicas=self.stream_replicas,
            )
        )
        for config in configs:
            try:
                await self._js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await self._js.update_stream(config)  # exists with another configuration

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
        name, kind = messaging_spans.publish_name(topic.name), trace.SpanKind.PRODUCER
        if contexts is None:
            with tracer.start_as_current_span(name, kind=kind) as span:
                self._describe_publish(span, topic, messages)
                context_headers: dict[str, str] = {}
                propagate.inject(context_headers)
                return await self._send(topic, messages, [context_headers] * len(messages), timeout)
        spans = [
            tracer.start_span(name, context=context, kind=kind) for _, context in zip(messages, contexts, strict=True)
        ]
        try:
            headers: list[dict[str, str]] = []
            for span, message in zip(spans, messages, strict=True):
                self._describe_publish(span, topic, (message,))
                headers.append({})
                propagate.inject(headers[-1], context=trace.set_span_in_context(span))
            return await self._send(topic, messages, headers, timeout)
        except BaseException as error:
            for span in spans:
                span.record_exception(error)
                span.set_status(trace.StatusCode.ERROR)
            raise
        finally:
            for span in spans:
                span.end()

    def _describe_publish(self, span: trace.Span, topic: Topic, messages: Sequence[tuple[str, bytes, str]]) -> None:
        if len(messages) == 1:
            key, _, message_id = messages[0]
            partition = topics.partition_of(key, self.partitions)
            messaging_spans.published(span, topic.name, 1, message_id, partition)
        else:
            messaging_spans.published(span, topic.name, len(messages))

    async def _send(
        self,
        topic: Topic,
        messages: Sequence[tuple[str, bytes, str]],
        context_headers: Sequence[dict[str, str]],
        timeout: float,
    ) -> list[bool]:
        if not messages:
            return []
        token = ""
        try:
            token, reply, answers = await self._acks.expect(len(messages))
            for index, ((key, payload, message_id), extra) in enumerate(zip(messages, context_headers, strict=False)):
                if index and not index % 256:
                    await asyncio.sleep(0)  # a big batch lets the flusher write and other calls run
                subject = topic.subject(topics.partition_of(key, self.partitions))
                headers = {"Nats-Msg-Id": message_id, KEY_HEADER: key, **extra}
                await self._nc.publish(subject, payload, reply=f"{reply}{index:x}", headers=headers)
            return [duplicate(answer) for answer in await asyncio.wait_for(answers, timeout)]
        except (*_NATS_DOWN, *_JETSTREAM_DOWN) as error:
            if getattr(error, "err_code", None) == _STREAM_FULL:
                raise Unavailable("nats", f"stream {topic.stream} is full (MOSAIC_NATS_STREAM_MAX_MESSAGES)") from error
            raise Unavailable("nats", f"publish to {topic.name} not confirmed: {type(error).__name__}") from error
        finally:
            self._acks.forget(token)

    async def erase(self, topic: Topic, sequence: int) -> None:
        """Delete a consumed message from its stream, its bytes overwritten on disk (JetStream's
        secure delete): for messages that must not outlive their use. One already gone is fine."""
        try:
            await self._js.delete_msg(topic.stream, sequence)
        except (*_NATS_DOWN, *_JETSTREAM_DOWN) as error:
            raise Unavailable("nats", f"erase from {topic.stream} not confirmed: {type(error).__name__}") from error
        except nats.js.errors.APIError as error:
            if error.err_code != _NO_MESSAGE:
                raise

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
                run.tasks.append(asyncio.create_task(self._consume(topic, partition, handler, batch_handler, run)))
            return
        for partition in partitions:
            run = _Run(None)
            run.tasks.append(asyncio.create_task(self._consume(topic, partition, handler, batch_handler, run)))
            self._named.append(run)

    def start_partition(self, partition: int, lease: Lease) -> None:
        """Run every registered consumer on a partition whose lease this replica now holds."""
        run = self._runs[partition] = _Run(lease)
        for topic, handler, batch_handler in self._consumers:
            run.tasks.append(asyncio.create_task(self._consume(topic, partition, handler, batch_handler, run)))

    async def stop_partition(self, partition: int) -> None:
        """Stop a partition's consumers: each finishes the message in hand and gives back the
        rest (once its last fetch has expired, up to 1.5 s); returns once their acks are flushed
        to the server, so the lease may go."""
        run = self._runs.pop(partition, None)
        if run is None:
            return
        run.stopping.set()
        await asyncio.gather(*run.tasks, return_exceptions=True)
        try:
            await self._nc.flush(timeout=5)
        except (*_NATS_DOWN, nats.errors.FlushTimeoutError):
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
            except (*_NATS_DOWN, nats.errors.FlushTimeoutError):
                await self._nc.close()  # nothing left to flush to: close without draining

    async def _consume(
        self, topic: Topic, partition: int, handler: Handler, batch_handler: BatchHandler | None, run: _Run
    ) -> None:
        durable = f"{self.service}-{partition}"
        config = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=-1,  # dead-lettering is decided here, where the reason is known
            max_ack_pending=self.batch * 2,
        )
        sub = None
        fetched = time.monotonic()
        if run.lease is not None and not run.lease.clean:
            await self._settle(topic, durable, run)
        while run.active():
            try:
                if sub is None:
                    sub = await self._js.pull_subscribe(
                        topic.subject(partition), durable=durable, stream=topic.stream, config=config
                    )
                fetched = time.monotonic()
                messages = await sub.fetch(self.batch, timeout=FETCH_SECONDS)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue  # nothing to fetch (nats-py raises either kind)
            except (*_NATS_DOWN, nats.js.errors.APIError) as error:
                log.warning("fetch from %s failed: %r", topic.subject(partition), error)
                await self._sleep(1.0, run)
                continue
            # The next batch only once this one is done, so a key never overtakes itself.
            if batch_handler is not None:
                await self._process_batch(topic, partition, messages, handler, batch_handler, run)
            else:
                await self._process_by_key(topic, partition, messages, handler, run)
        if sub is not None:
            await self._give_back(sub, topic, run, fetched)

    async def _give_back(self, sub: Any, topic: Topic, run: _Run, fetched: float) -> None:
        """Stopping: give back (nak) what this consumer took and did not finish, so the next
        holder takes it first, in stream order. Not before every pull request of the subscription
        has surely expired at the server: a message given back while one is open is redelivered
        into it, to stay unacked in a closed subscription for ack_wait while the next holder
        takes newer ones of the same keys. Whether a request is over can't be told from here:
        nats-py's fetch also returns early on a status meant for an earlier request, leaving its
        own open. So wait out the last fetch's expiry, keeping whatever still comes."""
        unfinished = run.unfinished.pop(topic.name, [])
        deadline = fetched + FETCH_SECONDS + EXPIRY_MARGIN_SECONDS
        # Only what is queued here: a fetch would ask the server for more.
        queue = sub._sub._pending_queue  # nats-py (pinned) offers no public way to drain it
        try:
            while True:
                while not queue.empty():
                    msg = queue.get_nowait()
                    if not JetStreamContext.is_status_msg(msg):
                        unfinished.append(msg)
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.05)
            for msg in sorted(unfinished, key=lambda m: m.metadata.sequence.stream):
                await msg.nak()
        except _NATS_DOWN:
            pass  # NATS is away: what it held comes back after ack_wait
        finally:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass

    async def _settle(self, topic: Topic, durable: str, run: _Run) -> None:
        """A partition leased without a release before (its holder died, or was cut off and
        stopped; or it released so long ago that its release aged out): messages it left unacked
        are redelivered once their ack_wait runs out, and only then ahead of newer ones. Waiting
        that long first, when any are in flight, keeps each key in order. (A released partition
        needs no wait: its holder acked what it finished and gave back the rest at once.)"""
        try:
            info = await self._js.consumer_info(topic.stream, durable)
        except nats.js.errors.NotFoundError:
            return  # a new durable: nothing in flight
        except (*_NATS_DOWN, nats.js.errors.APIError):
            info = None
        if info is None or info.num_ack_pending:
            log.info(
                "waiting out the previous holder's unacked messages",
                extra={"fields": {"durable": durable, "stream": topic.stream, "seconds": self.ack_wait}},
            )
            await self._sleep(self.ack_wait + 1.0, run)  # and a second for the server's timer

    async def _process_by_key(
        self, topic: Topic, partition: int, messages: list[Msg], handler: Handler, run: _Run
    ) -> None:
        """Messages of one key in order, different keys side by side."""
        by_key: dict[str, list[Msg]] = {}
        for msg in messages:
            by_key.setdefault((msg.headers or {}).get(KEY_HEADER, ""), []).append(msg)
        await asyncio.gather(
            *(self._process_in_order(topic, partition, group, handler, run) for group in by_key.values())
        )

    async def _process_batch(
        self,
        topic: Topic,
        partition: int,
        messages: list[Msg],
        handler: Handler,
        batch_handler: BatchHandler,
        run: _Run,
    ) -> None:
        if not run.active():
            run.leave(topic, messages)  # given back on stopping, not after ack_wait
            return
        started = time.perf_counter()
        kept: list[Msg] = []
        items: list[tuple[Any, Delivery]] = []
        spans = []
        for msg in messages:
            try:
                payload = topic.message.FromString(msg.data)
            except DecodeError as error:
                reason = f"payload is not a {topic.message.DESCRIPTOR.full_name}: {error}"
                await self._dead_letter(topic, msg, reason, started)
                continue
            delivery = self._delivery(msg, partition)
            span = tracer.start_span(
                messaging_spans.process_name(topic.name),
                context=propagate.extract(msg.headers or {}),
                kind=trace.SpanKind.CONSUMER,
            )
            messaging_spans.processed(span, topic.name, self.service, delivery.message_id, partition)
            spans.append(span)
            kept.append(msg)
            items.append((payload, dataclasses.replace(delivery, trace_context=trace.set_span_in_context(span))))
        if not kept:
            return
        try:
            await self._with_heartbeat(kept, batch_handler(items), run)
        except Exception as error:  # noqa: BLE001 - every outcome is decided again, message by message
            log.warning(
                "batch of %d on %s failed (%r); handling it one message at a time",
                len(kept),
                topic.subject(partition),
                error,
            )
            for span in spans:
                span.record_exception(error)
                span.end()
            await self._process_by_key(topic, partition, kept, handler, run)
            return
        for span in spans:
            span.end()
        if not run.may_ack():
            run.leave(topic, kept)  # the lease lapsed meanwhile: the next holder does them again
            return
        for msg in kept:
            await msg.ack()
        if metrics.enabled():
            # Each message of the batch took the batch's time from fetch to ack.
            seconds = time.perf_counter() - started
            for msg in kept:
                self._measure(topic, msg, "ack", seconds)

    def _delivery(self, msg: Msg, partition: int) -> Delivery:
        meta = msg.metadata
        headers = msg.headers or {}
        return Delivery(
            subject=msg.subject,
            partition=partition,
            stream_sequence=meta.sequence.stream,
            num_delivered=meta.num_delivered,
            message_id=headers.get("Nats-Msg-Id", ""),
            key=headers.get(KEY_HEADER, ""),
        )

    async def _process_in_order(
        self, topic: Topic, partition: int, messages: list[Msg], handler: Handler, run: _Run
    ) -> None:
        for index, msg in enumerate(messages):
            if not run.active():
                run.leave(topic, messages[index:])  # given back on stopping, not after ack_wait
                return
            await self._process(topic, partition, msg, handler, run)

    async def _process(self, topic: Topic, partition: int, msg: Msg, handler: Handler, run: _Run) -> None:
        started = time.perf_counter()
        meta = msg.metadata
        delivery = self._delivery(msg, partition)
        with tracer.start_as_current_span(
            messaging_spans.process_name(topic.name),
            context=propagate.extract(msg.headers or {}),
            kind=trace.SpanKind.CONSUMER,
        ) as span:
            messaging_spans.processed(span, topic.name, self.service, delivery.message_id, partition)
            try:
                payload = topic.message.FromString(msg.data)
            except DecodeError as error:
                reason = f"payload is not a {topic.message.DESCRIPTOR.full_name}: {error}"
                await self._dead_letter(topic, msg, reason, started)
                return
            try:
                try:
                    await self._with_heartbeat(msg, handler(payload, delivery), run)
                except Unavailable as error:  # retried in place, holding the partition (see above)
                    call = lambda: self._with_heartbeat(msg, handler(payload, delivery), run)
                    await retry.after_first(error, call, self._in_place(topic, msg, started, run))
            except Unavailable:  # still down when the partition stopped: given back on stopping
                run.leave(topic, [msg])
                return
            except DomainError as error:
                span.record_exception(error)
                await self._dead_letter(topic, msg, str(error), started)
                return
            except Exception as error:  # a bug: redeliver with a delay, then give up
                span.record_exception(error)
                log.exception("handler failed on %s (delivery %d)", msg.subject, meta.num_delivered)
                if meta.num_delivered >= self.max_deliver:
                    await self._dead_letter(topic, msg, f"failed {meta.num_delivered} times: {error!r}", started)
                else:
                    await msg.nak(delay=backoff(meta.num_delivered))
                    self._measure(topic, msg, "redeliver", time.perf_counter() - started)
                return
            if not run.may_ack():
                run.leave(topic, [msg])  # the lease lapsed meanwhile: the next holder does it again
                return
            await msg.ack()
            self._measure(topic, msg, "ack", time.perf_counter() - started)

    def _in_place(self, topic: Topic, msg: Msg, started: float, run: _Run) -> tenacity.AsyncRetrying:
        """Retries of a handler that raised Unavailable: backoff, the message kept in progress,
        until its partition stops (then the last Unavailable is raised)."""

        async def before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            self._measure(topic, msg, "retry", time.perf_counter() - started)
            log.warning("retrying %s (attempt %d): %s", msg.subject, state.attempt_number, error)
            await msg.in_progress()

        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(Unavailable),
            stop=lambda _: not run.active(),
            wait=retry.wait(BACKOFF_BASE, BACKOFF_CAP),
            sleep=lambda seconds: self._sleep(seconds, run),
            before_sleep=before_sleep,
            reraise=True,
        )

    async def _with_heartbeat(self, messages: Msg | list[Msg], work: Awaitable[None], run: _Run) -> None:
        """Run the handler, telling JetStream its messages are in progress every third of
        ack_wait while the lease holds (after that they return to the next holder in time)."""
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=self.ack_wait / 3)
            if done:
                return task.result()
            if run.may_ack():
                for msg in messages if isinstance(messages, list) else [messages]:
                    await msg.in_progress()

    def _measure(self, topic: Topic, msg: Msg, outcome: str, seconds: float) -> None:
        """Record one message's outcome; an acked one's hop latency too, from the time JetStream
        stored it (its metadata, already parsed for the delivery) to now."""
        if not metrics.enabled():
            return  # nothing reads them: skip even the clock
        since_publish = time.time() - msg.metadata.timestamp.timestamp() if outcome == "ack" else None
        metrics.message_processed(self.service, topic.name, outcome, seconds, since_publish)

    async def _dead_letter(self, topic: Topic, msg: Msg, reason: str, started: float) -> None:
        log.error("dead-lettering %s: %s", msg.subject, reason)
        headers = {
            "Mosaic-Reason": reason[:1000],
            "Mosaic-Subject": msg.subject,
            "Mosaic-Stream-Sequence": str(msg.metadata.sequence.stream),
        }
        if msg.headers and "Nats-Msg-Id" in msg.headers:
            headers["Nats-Msg-Id"] = f"{self.service}:{msg.headers['Nats-Msg-Id']}"
        try:
            await self._js.publish(f"deadletter.{self.service}.{msg.subject}", msg.data, headers=headers, timeout=5)
        except _NATS_DOWN:
            await msg.nak(delay=5.0)  # not recorded, so not terminated: try again later
            self._measure(topic, msg, "redeliver", time.perf_counter() - started)
            return
        await msg.term()
        self._measure(topic, msg, "dead_letter", time.perf_counter() - started)

    async def _sleep(self, seconds: float, run: _Run) -> None:
        try:
            await asyncio.wait_for(run.stopping.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass


async def _log_error(error: Exception) -> None:
    log.warning("nats: %r", error)


def _log_event(text: str) -> Callable[[], Awaitable[None]]:
    async def callback() -> None:
        log.warning(text)

    return callback
