"""The ordered consumer of one topic's partition.

One durable pull consumer per (service, partition), named `<service>-<partition>`, run only by
the replica that holds the partition's lease (see `mosaic.platform.ownership`, which starts and
stops partitions through the bus). Each fetched batch is split by the key the publisher
partitioned by (`Mosaic-Key`): messages of one key are handled one at a time, in order,
different keys concurrently; each message is acked only after the handler returned, i.e. after
its durable write. What happens to a message the handler failed on is decided by
`failures.decide` and carried out here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import nats.errors
import nats.js.errors
import tenacity
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context

from mosaic.platform import messaging_spans, metrics, retry
from mosaic.platform.failures import BACKOFF_BASE, BACKOFF_CAP, Action, Decision, Unparsable, decide
from mosaic.platform.nats_connection import NATS_DOWN
from mosaic.platform.publisher import KEY_HEADER
from mosaic.platform.pull import Puller
from mosaic.platform.topics import Topic

if TYPE_CHECKING:
    from mosaic.platform.ownership import Lease

log = logging.getLogger("mosaic.bus")
tracer = trace.get_tracer("mosaic.bus")

FETCH_SECONDS = 1.0  # how long one fetch waits for messages


class Delivery(NamedTuple):
    """Where a consumed message came from. A named tuple: made for every message of every
    consumer, and a frozen dataclass takes ~4x as long to make."""

    subject: str
    partition: int
    stream_sequence: int
    num_delivered: int
    message_id: str
    key: str = ""  # the key it was partitioned by
    # The context of its process span (without spans recorded, the context it came with): a batch
    # handler has no current span per message, so it hands this to `publish_many(contexts=...)`
    # to keep each message's trace going.
    trace_context: Context | None = None


Handler = Callable[[Any, Delivery], Awaitable[None]]
# A handler of a whole fetched batch of one partition, `(payload, delivery)` in stream order; see
# `Bus.consume`. It must leave the same state as the per-message handler applied to each in turn.
BatchHandler = Callable[[list[tuple[Any, Delivery]]], Awaitable[None]]


def one_by_one(handler: Handler) -> BatchHandler:
    """A batch handler that runs `handler` on each message of the batch in stream order, each
    under its own trace: for a topic most of whose messages need little of the service (consent
    and delivery reading events.resolved), where the per-key path's task per key costs more."""

    async def batch(items: list[tuple[Any, Delivery]]) -> None:
        for payload, delivery in items:
            token = otel_context.attach(delivery.trace_context) if delivery.trace_context is not None else None
            try:
                await handler(payload, delivery)
            finally:
                if token is not None:
                    otel_context.detach(token)

    return batch


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a consumer paces itself: the bus's, as they are when the consumer starts."""

    ack_wait: float  # seconds JetStream waits for an ack (or progress) before redelivering
    max_deliver: int  # deliveries of a failing message before it is dead-lettered
    batch: int  # messages per fetch


def delivered(reply: str) -> tuple[int, int]:
    """A JetStream message's (stream sequence, deliveries) from its reply subject: the two
    fields of its metadata every message needs, without nats-py's `Msg.metadata` (~6 µs a
    message: two frozen dataclasses and a datetime), which the rare paths still read.
    `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`, or
    with `<domain>.<account hash>.` after `$JS.ACK.` and a token at the end."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[4])
    return int(tokens[7]), int(tokens[6])


class Run:
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


class Consumer:
    """One topic's durable consumer on one partition, for as long as `run` goes on."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        service: str,
        topic: Topic,
        partition: int,
        handler: Handler,
        batch_handler: BatchHandler | None,
        run: Run,
        settings: Settings,
    ) -> None:
        self._nc = nc
        self._js = js
        self.service = service
        self.topic = topic
        self.partition = partition
        self.handler = handler
        self.batch_handler = batch_handler
        self.run = run
        self.settings = settings
        self.durable = f"{service}-{partition}"
        self._late: list[Msg] = []  # see `_fetch`

    async def consume(self) -> None:
        """Fetch and process batch after batch until the run stops, then give back the rest."""
        topic, partition, run = self.topic, self.partition, self.run
        config = api.ConsumerConfig(
            durable_name=self.durable,
            filter_subject=topic.partition_subjects(partition),
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait,
            max_deliver=-1,  # dead-lettering is decided here, where the reason is known
            max_ack_pending=self.settings.batch * 2,
        )
        puller = None
        if run.lease is not None and not run.lease.clean:
            await self._settle()
        while run.active():
            try:
                if puller is None:
                    puller = await Puller.bind(self._js, self._nc, topic.stream, config, self._late.append)
                messages = await self._fetch(puller)
            except (*NATS_DOWN, nats.js.errors.APIError) as error:
                log.warning("fetch from %s failed: %r", topic.partition_subjects(partition), error)
                await self._sleep(1.0)
                continue
            if not messages:
                continue
            # The next batch only once this one is done, so a key never overtakes itself.
            if self.batch_handler is not None:
                await self._process_batch(messages, self.batch_handler)
            else:
                await self._process_by_key(messages)
        if puller is not None:
            await self._give_back(puller)

    async def _fetch(self, puller: Puller) -> list[Msg]:
        """The next batch: what came after its request was given up (its end lost with a
        connection), else a batch from JetStream."""
        if self._late:
            messages, self._late = self._late, []
            return messages
        return await puller.fetch(self.settings.batch, FETCH_SECONDS)

    async def _give_back(self, puller: Puller) -> None:
        """Stopping: give back (nak) what this consumer took and did not finish, so the next
        holder takes it first, in stream order. A fetch returns only once its pull request is
        over, so nothing more is on its way (given back while a request was still open, a
        message would be redelivered into it, to stay unacked in a closed subscription for
        ack_wait while the next holder took newer ones of the same keys)."""
        unfinished = self.run.unfinished.pop(self.topic.name, []) + self._late
        self._late = []
        try:
            for msg in sorted(unfinished, key=lambda m: m.metadata.sequence.stream):
                await msg.nak()
        except NATS_DOWN:
            pass  # NATS is away: what it held comes back after ack_wait
        finally:
            await puller.close()

    async def _settle(self) -> None:
        """A partition leased without a release before (its holder died, or was cut off and
        stopped; or it released so long ago that its release aged out): messages it left unacked
        are redelivered once their ack_wait runs out, and only then ahead of newer ones. Waiting
        that long first, when any are in flight, keeps each key in order. (A released partition
        needs no wait: its holder acked what it finished and gave back the rest at once.)"""
        try:
            info = await self._js.consumer_info(self.topic.stream, self.durable)
        except nats.js.errors.NotFoundError:
            return  # a new durable: nothing in flight
        except (*NATS_DOWN, nats.js.errors.APIError):
            info = None
        if info is None or info.num_ack_pending:
            ack_wait = self.settings.ack_wait
            log.info(
                "waiting out the previous holder's unacked messages",
                extra={"fields": {"durable": self.durable, "stream": self.topic.stream, "seconds": ack_wait}},
            )
            await self._sleep(ack_wait + 1.0)  # and a second for the server's timer

    async def _process_by_key(self, messages: list[Msg]) -> None:
        """Messages of one key in order, different keys side by side; all kept in progress until
        each is done (those waiting behind a slow one of their key too)."""
        by_key: dict[str, list[Msg]] = {}
        for msg in messages:
            by_key.setdefault((msg.headers or {}).get(KEY_HEADER, ""), []).append(msg)
        unfinished = {id(msg): msg for msg in messages}
        async with self._kept_in_progress(unfinished):
            if len(by_key) == 1:
                await self._process_in_order(messages, unfinished)
            else:
                await asyncio.gather(*(self._process_in_order(group, unfinished) for group in by_key.values()))

    async def _process_batch(self, messages: list[Msg], batch_handler: BatchHandler) -> None:
        topic, run = self.topic, self.run
        if not run.active():
            run.leave(topic, messages)  # given back on stopping, not after ack_wait
            return
        started = time.perf_counter()
        kept: list[Msg] = []
        items: list[tuple[Any, Delivery]] = []
        spans = []
        recording = messaging_spans.recording()  # else no span: a message's context is passed on as it came
        for msg in messages:
            try:
                payload = topic.message.FromString(msg.data)
            except DecodeError as error:
                await self._carry_out(msg, self._decide(self._unparsable(error), self._delivery(msg)), started)
                continue
            if recording:
                span = tracer.start_span(
                    messaging_spans.process_name(topic.name),
                    context=propagate.extract(msg.headers or {}),
                    kind=trace.SpanKind.CONSUMER,
                )
                delivery = self._delivery(msg, trace.set_span_in_context(span))  # one Delivery per message
                messaging_spans.processed(span, topic.name, self.service, delivery.message_id, self.partition)
                spans.append(span)
            else:
                delivery = self._delivery(msg, messaging_spans.carried(msg.headers))
            kept.append(msg)
            items.append((payload, delivery))
        if not kept:
            return
        try:
            async with self._kept_in_progress({id(msg): msg for msg in kept}):
                await batch_handler(items)
        except Exception as error:  # noqa: BLE001 - every outcome is decided again, message by message
            log.warning(
                "batch of %d on %s failed (%r); handling it one message at a time",
                len(kept),
                topic.partition_subjects(self.partition),
                error,
            )
            for span in spans:
                span.record_exception(error)
                span.end()
            await self._process_by_key(kept)
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
                self._measure(msg, "ack", seconds)

    def _delivery(self, msg: Msg, trace_context: Context | None = None) -> Delivery:
        stream_sequence, num_delivered = delivered(msg.reply)
        headers = msg.headers or {}
        return Delivery(
            msg.subject,
            self.partition,
            stream_sequence,
            num_delivered,
            headers.get("Nats-Msg-Id", ""),
            headers.get(KEY_HEADER, ""),
            trace_context,
        )

    async def _process_in_order(self, messages: list[Msg], unfinished: dict[int, Msg]) -> None:
        for index, msg in enumerate(messages):
            if not self.run.active():
                self.run.leave(self.topic, messages[index:])  # given back on stopping, not after ack_wait
                return
            await self._process(msg)
            del unfinished[id(msg)]

    async def _process(self, msg: Msg) -> None:
        started = time.perf_counter()
        delivery = self._delivery(msg)
        with tracer.start_as_current_span(
            messaging_spans.process_name(self.topic.name),
            context=propagate.extract(msg.headers or {}),
            kind=trace.SpanKind.CONSUMER,
        ) as span:
            messaging_spans.processed(span, self.topic.name, self.service, delivery.message_id, self.partition)
            try:
                payload = self.topic.message.FromString(msg.data)
            except DecodeError as error:
                await self._carry_out(msg, self._decide(self._unparsable(error), delivery), started)
                return
            handle = lambda: self.handler(payload, delivery)
            try:
                try:
                    await handle()
                except Exception as error:  # retried in place for as long as the decision says so
                    await retry.after_first(error, handle, self._in_place(msg, delivery, started))
            except Exception as error:
                decision = self._decide(error, delivery)
                if decision.bug:
                    log.exception("handler failed on %s (delivery %d)", msg.subject, delivery.num_delivered)
                if decision.action is not Action.GIVE_BACK:
                    span.record_exception(error)
                await self._carry_out(msg, decision, started)
                return
            if not self.run.may_ack():
                self.run.leave(self.topic, [msg])  # the lease lapsed meanwhile: the next holder does it again
                return
            await msg.ack()
            self._measure(msg, "ack", time.perf_counter() - started)

    def _unparsable(self, error: DecodeError) -> Unparsable:
        return Unparsable(self.topic.message.DESCRIPTOR.full_name, error)

    def _decide(self, error: BaseException, delivery: Delivery) -> Decision:
        return decide(error, delivery.num_delivered, self.settings.max_deliver, active=self.run.active())

    async def _carry_out(self, msg: Msg, decision: Decision, started: float) -> None:
        """Do what was decided for a message that failed (a retry in place is over by now)."""
        if decision.action is Action.GIVE_BACK:
            self.run.leave(self.topic, [msg])  # given back on stopping, not after ack_wait
        elif decision.action is Action.DEAD_LETTER:
            await self._dead_letter(msg, decision.reason, started)
        elif decision.action is Action.REDELIVER:
            await msg.nak(delay=decision.delay)
            self._measure(msg, "redeliver", time.perf_counter() - started)

    def _in_place(self, msg: Msg, delivery: Delivery, started: float) -> tenacity.AsyncRetrying:
        """Retries of a handler while its failure is to be retried in place (`Unavailable` while
        the partition is active): backoff, the message kept in progress. Any other failure is
        raised at once, as is the last `Unavailable` once the partition stops."""

        async def before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            self._measure(msg, "retry", time.perf_counter() - started)
            log.warning("retrying %s (attempt %d): %s", msg.subject, state.attempt_number, error)
            await msg.in_progress()

        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(
                lambda error: self._decide(error, delivery).action is Action.RETRY_IN_PLACE
            ),
            wait=retry.wait(BACKOFF_BASE, BACKOFF_CAP),
            sleep=self._sleep,
            before_sleep=before_sleep,
        )

    @contextlib.asynccontextmanager
    async def _kept_in_progress(self, unfinished: dict[int, Msg]) -> AsyncIterator[None]:
        """While the fetched batch is worked on, tell JetStream every third of ack_wait that its
        messages not yet done are in progress, while the lease holds (after that they return to
        the next holder in time). One timer for the batch: a task per message cost more than
        consent's and delivery's handling of most events."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.settings.ack_wait / 3)
                if self.run.may_ack():
                    for msg in list(unfinished.values()):
                        await msg.in_progress()

        heartbeat = asyncio.create_task(beat())
        try:
            yield
        finally:
            heartbeat.cancel()

    def _measure(self, msg: Msg, outcome: str, seconds: float) -> None:
        """Record one message's outcome; an acked one's hop latency too, from the time JetStream
        stored it (its metadata, already parsed for the delivery) to now."""
        if not metrics.enabled():
            return  # nothing reads them: skip even the clock
        since_publish = time.time() - msg.metadata.timestamp.timestamp() if outcome == "ack" else None
        metrics.message_processed(self.service, self.topic.name, outcome, seconds, since_publish)

    async def _dead_letter(self, msg: Msg, reason: str, started: float) -> None:
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
        except NATS_DOWN:
            await msg.nak(delay=5.0)  # not recorded, so not terminated: try again later
            self._measure(msg, "redeliver", time.perf_counter() - started)
            return
        await msg.term()
        self._measure(msg, "dead_letter", time.perf_counter() - started)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.run.stopping.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass
