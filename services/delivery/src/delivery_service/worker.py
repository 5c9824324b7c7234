"""The worker pool of one destination: reads its own queue, sends, records.

Each destination has its own pull consumer, connection pool, concurrency bound, rate limit,
circuit breaker and retry budget, so a destination that times out or fails holds only its own
slots and fills only its own queue; the others never wait for it.

Consent is read again just before each send (the planner asked when it decided, but a job may
wait in its queue, be retried or be replayed), from the answers `consent.Answers` keeps current
with consent's change notices: a purpose withdrawn meanwhile finishes the job as SUPPRESSED,
never sent. While the consent service does not answer a question with no answer kept, the job
is held in progress and asked again with backoff: no attempt is spent and nothing goes out
without an answer.

A job's attempt number is JetStream's delivery count. A retryable failure with budget left is
nak'ed with the retry delay (Retry-After or jittered backoff): the slot is free at once and
JetStream brings the job back. Once sent, refused or out of budget, the job's record (and its
dead letter) is written in a batch with the others that finished meanwhile, the outcomes are
published, and only then are the jobs acked: a crash before that sends again, with the same
idempotency key. Jobs in hand whose handling fails on a transient error (NATS, the store) are
nak'ed to come back in a second, not after their ack wait.

A job of a person erased since it was queued (planned just before the erasure's tombstone,
queued after the erasure removed the person's jobs from the stream) is acked unsent, with no
record or outcome naming the person (`ErasedPeople`, a set lookup in memory).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nats.errors
from google.protobuf import message, timestamp_pb2
from nats.aio.msg import Msg
from opentelemetry import trace

from delivery_service.audience_files import AudienceFiles
from delivery_service.consent import Answers
from delivery_service.destinations import Kind, kind_of
from delivery_service.jobs import JobQueue, context_of, durable_of
from delivery_service.limits import CircuitBreaker, TokenBucket, retry_delay
from delivery_service.privacy import ErasedPeople
from delivery_service.smtp import SmtpSender
from delivery_service.ssrf import AddressPolicy
from delivery_service.store import DeliveryStore
from delivery_service.webhook import HttpSender, Refused, Retryable
from mosaic.delivery.v1 import delivery_pb2
from mosaic.events.v1 import delivery_outcome_pb2
from mosaic.platform import messaging_spans, metrics, topics
from mosaic.platform.bus import Bus, backoff
from mosaic.platform.errors import Unavailable
from mosaic.platform.pull import ENDS_WELL, Puller

log = logging.getLogger("mosaic.delivery.worker")
# What may fail a job's handling for a moment: NATS (a timeout, the connection away), a socket,
# the store (Cassandra's timeouts are Unavailable). Jobs in hand are then given back at once.
TRANSIENT = (nats.errors.Error, OSError, Unavailable)


def _direct_tracer() -> trace.Tracer:
    """The tracer the provider gives now, not the module's proxy to it: the proxy wraps every
    span in a context manager of its own (~6 % of this process's samples under the bench, the
    no-op spans included). The worker's spans and its HTTP client's come from it. Taken when a
    worker starts, after telemetry.setup; without an SDK provider (no exporter) it is the API's
    no-op tracer, as the proxy's would be."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        return trace.NoOpTracer()
    return provider.get_tracer("mosaic.delivery.worker")


async def _decoded(msg: Msg) -> delivery_pb2.DeliveryJob | None:
    """The job a message holds; None for one that is not a job, which is terminated (it would
    never decode, so it would come back after every ack wait, forever)."""
    try:
        return delivery_pb2.DeliveryJob.FromString(msg.data)
    except message.DecodeError as error:
        log.error(
            "not a delivery job: terminated",
            extra={"fields": {"subject": msg.subject, "bytes": len(msg.data), "error": str(error)}},
        )
        await msg.term()
        return None


def attempt_of(msg: Msg) -> int:
    """The job's delivery count, read from its ack subject: `msg.metadata` parses all of it (and
    makes a datetime) on every read, ~2 % of this process's samples. The subject is
    `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`, or
    with `<domain>.<account hash>.` after `$JS.ACK.` and a token at the end."""
    parts = (msg.reply or "").split(".")
    if parts[:2] == ["$JS", "ACK"]:
        if len(parts) == 9:
            return int(parts[4])
        if len(parts) >= 11:
            return int(parts[6])
    return msg.metadata.num_delivered  # raises as it would for a message not from JetStream


# Status values are read as delivery_pb2's module constants: the enum wrapper's getattr is a Python call.
Status = delivery_pb2.DeliveryStatus
# A decided delivery's status as the outcome `mosaic.delivery.deliveries` counts it by.
OUTCOMES = {
    delivery_pb2.DELIVERY_STATUS_SENT: "delivered",
    delivery_pb2.DELIVERY_STATUS_SUPPRESSED: "suppressed",
    delivery_pb2.DELIVERY_STATUS_FAILED: "failed",
    delivery_pb2.DELIVERY_STATUS_DEAD_LETTERED: "dead_lettered",
    delivery_pb2.DELIVERY_STATUS_DISCARDED: "discarded",
}


@dataclass(frozen=True)
class WorkerSettings:
    policy: AddressPolicy
    max_attempts: int = 5
    timeout: float = 10.0
    concurrency: int = 32
    breaker_threshold: int = 5
    breaker_cooldown: float = 2.0
    retry_base: float = 0.5
    audience_dir: Path | None = None
    smtp_ca: str = ""  # trusted for SMTP servers besides the system's trust store


@dataclass
class _Finished:
    msg: Msg
    record: delivery_pb2.Delivery
    letter: delivery_pb2.DeadLetter | None = None


@dataclass
class _Recorder:
    """Finished jobs waiting for their batched write, outcome and ack."""

    items: list[_Finished] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def now() -> timestamp_pb2.Timestamp:
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)  # GetCurrentTime goes through a datetime
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


class DestinationWorker:
    def __init__(
        self,
        destination: delivery_pb2.Destination,
        queue: JobQueue,
        store: DeliveryStore,
        bus: Bus,
        settings: WorkerSettings,
        answers: Answers,
        erased: ErasedPeople | None = None,
    ) -> None:
        self.destination = destination
        self.answers = answers
        self.erased = erased or ErasedPeople(store)
        self.queue = queue
        self.store = store
        self.bus = bus
        limits = destination.limits
        self.kind = kind_of(destination)
        self.concurrency = limits.concurrency or settings.concurrency
        self.max_attempts = limits.max_attempts or settings.max_attempts
        self.timeout = limits.timeout_seconds or settings.timeout
        self.retry_base = settings.retry_base
        self.bucket = TokenBucket(limits.rate_per_second)
        self.breaker = CircuitBreaker(settings.breaker_threshold, settings.breaker_cooldown)
        self.headers = dict(destination.headers)
        self.smtp = SmtpSender(settings.policy, self.timeout, settings.smtp_ca)
        self.files = AudienceFiles.of(destination, settings.audience_dir)
        self._slots = asyncio.Semaphore(self.concurrency)
        self._recorder = _Recorder()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._main: list[asyncio.Task[None]] = []
        self._own: JobQueue | None = None
        self._late_members: list[Msg] = []  # audience jobs that came after their request was given up
        self._tracer = _direct_tracer()
        self.http = HttpSender(
            settings.policy, self.concurrency, self.timeout, self._tracer, destination.signing_secret
        )

    def start(self) -> None:
        self._main = [asyncio.create_task(self._run()), asyncio.create_task(self._record_forever())]

    async def stop(self) -> None:
        self._stopping.set()
        await asyncio.gather(*self._main[:1], return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._recorder.wake.set()
        await asyncio.gather(*self._main[1:], return_exceptions=True)
        await self.http.close()
        if self._own is not None:
            await self._own.close()

    async def _run(self) -> None:
        feed = None
        own: JobQueue | None = None
        ack_wait = self.timeout * 2 + 5
        destination_id = self.destination.destination_id
        audience = self.kind == Kind.DESTINATION_KIND_AUDIENCE_SYNC
        while not self._stopping.is_set():
            try:
                if own is None:
                    own = await self.queue.own_connection()
                if feed is None:
                    feed = await own.feed(destination_id, self.concurrency, ack_wait, self._late)
                if audience:
                    await self._sync_audience(feed)
                else:
                    await self._take_jobs(feed)
            except TRANSIENT as error:
                log.warning("queue of %s: %r", destination_id, error)
                await asyncio.sleep(1.0)
            except Exception:  # noqa: BLE001 - a bug: logged, and the worker goes on (its jobs come back after ack_wait)
                log.exception("worker of %s", destination_id)
                await asyncio.sleep(1.0)
        if feed is not None:
            await feed.close()
        # Audience jobs that came after the last batch (until the feed closed): given back now,
        # not after their ack wait.
        late, self._late_members = self._late_members, []
        await asyncio.gather(*(msg.nak() for msg in late), return_exceptions=True)
        self._own = own  # closed in stop(), once the recorder has acked what it holds

    async def _take_jobs(self, feed: Puller) -> None:
        """Take free slots and ask for as many jobs: what the queue holds now, else the first
        that comes within 1 s; each is being sent as soon as it comes.

        Not one request for everything over 1 s: while the queue is empty, the jobs that trickle
        in would be sent, but the circuit would not be looked at again until the second is
        over (and a job sent while the circuit is open spends an attempt). A rate-limited
        destination asks only for the tokens it has, once it has one: its jobs wait for their
        tokens in the queue, untouched, not past their ack wait here."""
        probe = await self._wait_for_circuit()
        if self._stopping.is_set():
            return
        tokens, wait = self.bucket.ready()
        if wait:
            await asyncio.sleep(min(wait, 1.0))  # then the circuit and the bucket are looked at again
            return
        wanted = await self._take_slots(min(1 if probe else min(self.concurrency, 256), tokens))
        dispatch = functools.partial(self._dispatch, probe=True) if probe else self._dispatch
        came, how = 0, ""
        try:
            came, how = await feed.take(wanted, 1.0, dispatch)
        finally:
            self._release(wanted - came)
        if probe and not came:
            self.breaker.abandon_probe()
        if not came and how not in ENDS_WELL:
            log.warning("queue of %s: the request for jobs ended with %s", self.destination.destination_id, how)
            await asyncio.sleep(0.5)  # refused (409) or lost: not asked again at once

    def _dispatch(self, msg: Msg, slot: bool = True, probe: bool = False) -> None:
        task = asyncio.create_task(self._handle(msg, slot, probe))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _late(self, msg: Msg) -> None:
        """A job that came after its request was over here (given up: its end lost or too late).
        An audience job goes in the next batch; any other is sent without a slot (a few over the
        bound, once). Giving it back would spend one of its attempts."""
        if self.kind == Kind.DESTINATION_KIND_AUDIENCE_SYNC:
            self._late_members.append(msg)  # the list of now: _fill swaps it for a new one
        else:
            self._dispatch(msg, slot=False)

    async def _sync_audience(self, feed: Puller) -> None:
        probe = await self._wait_for_circuit()
        if self._stopping.is_set():
            return
        audience = self.destination.audience
        batch: list[Msg] = []  # the jobs in hand, kept so by _fill and _send_audience
        try:
            await self._fill(feed, batch, audience.batch_size or 500, audience.linger_seconds or 1.0)
            if batch:
                await self._send_audience(batch)
        except TRANSIENT as error:
            await self._give_back(batch, error)
            raise  # _run waits a moment before the next batch
        finally:
            if probe:
                self.breaker.abandon_probe()  # sent nothing (erased, suppressed, given back): no verdict

    async def _fill(self, feed: Puller, batch: list[Msg], size: int, linger: float) -> None:
        """Fill `batch`: the first job (what the queue holds now, else the first that comes
        within 1 s), then what else comes within `linger` seconds, up to `size`."""
        batch += self._late_members
        self._late_members = []
        if not batch:
            batch += await feed.fetch(size, 1.0)
        if batch and len(batch) < size and not self._stopping.is_set():
            await feed.request(size - len(batch), linger, batch.append)

    async def _take_slots(self, most: int) -> int:
        """Wait for one free slot, then take up to `most` of those free now. What is not
        fetched stays in the queue, where another replica's workers may take it."""
        await self._slots.acquire()
        taken = 1
        while taken < most and not self._slots.locked():
            await self._slots.acquire()
            taken += 1
        return taken

    def _release(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    async def _wait_for_circuit(self) -> bool:
        """Wait while the circuit is open; True when the next send is the half-open probe."""
        while not self._stopping.is_set():
            if self.breaker.allow():
                return self.breaker.probing
            await asyncio.sleep(min(1.0, max(0.05, self.breaker.wait_time())))
        return False

    async def _handle(self, msg: Msg, slot: bool = True, probe: bool = False) -> None:
        try:
            wait = self.bucket.wait_time()
            if wait:
                await asyncio.sleep(wait)
            job = await _decoded(msg)
            if job is None:
                return
            attempt = attempt_of(msg)
            with self._tracer.start_as_current_span(
                messaging_spans.process_name(topics.DELIVERY_JOBS.name),
                context=context_of(msg),
                kind=trace.SpanKind.CONSUMER,
            ) as span:
                messaging_spans.processed(
                    span,
                    topics.DELIVERY_JOBS.name,
                    durable_of(job.destination_id),
                    (msg.headers or {}).get("Nats-Msg-Id", ""),
                )
                span.set_attributes(
                    {
                        "mosaic.destination.id": job.destination_id,
                        "mosaic.delivery.id": job.delivery_id,
                        "mosaic.delivery.attempt": attempt,
                    }
                )
                if await self.erased.erased(job.profile_id):
                    await msg.ack()  # erased since it was queued: nothing sent, nothing names them
                    return
                consented = await self._consented([msg], [job])
                if consented is None:
                    return  # stopping while consent could not be asked: the job comes back
                if not consented[0]:
                    self._finish(msg, job, attempt, delivery_pb2.DELIVERY_STATUS_SUPPRESSED, self._withdrawn())
                    return
                try:
                    detail = await self._send(job)
                except Refused as error:
                    self.breaker.succeeded()  # it answered: the endpoint is up, the request is not wanted
                    self._finish(msg, job, attempt, delivery_pb2.DELIVERY_STATUS_DEAD_LETTERED, str(error), dead=True)
                except Retryable as error:
                    self.breaker.failed()
                    if attempt >= self.max_attempts:
                        detail = f"{error} (attempt {attempt} of {self.max_attempts})"
                        self._finish(msg, job, attempt, delivery_pb2.DELIVERY_STATUS_DEAD_LETTERED, detail, dead=True)
                    else:
                        await msg.nak(delay=retry_delay(attempt, error.retry_after, self.retry_base))
                else:
                    self.breaker.succeeded()
                    self._finish(msg, job, attempt, delivery_pb2.DELIVERY_STATUS_SENT, detail)
        except TRANSIENT as error:
            await self._give_back([msg], error)
        except Exception:  # noqa: BLE001 - a bug: the job comes back after ack_wait
            log.exception("job on %s not handled", msg.subject)
        finally:
            if probe:
                self.breaker.abandon_probe()  # sent nothing (erased, suppressed, not a job, given back): no verdict
            if slot:
                self._slots.release()

    async def _consented(self, messages: list[Msg], jobs: list[delivery_pb2.DeliveryJob]) -> list[bool] | None:
        """Whether each job's person consents to the destination's purpose now (leaving an
        audience needs none). While the consent service does not answer, the jobs are kept in
        progress and it is asked again; None when the worker stops meanwhile (the jobs are nak'ed)."""
        purpose = self.destination.purpose
        attempt = 0
        while True:
            try:
                if len(jobs) == 1:  # the webhook's case: no gather, no task
                    return [jobs[0].exited or await self.answers.granted(jobs[0].profile_id, purpose)]
                return list(
                    await asyncio.gather(
                        *(_always() if job.exited else self.answers.granted(job.profile_id, purpose) for job in jobs)
                    )
                )
            except Unavailable as error:
                attempt += 1
                if self._stopping.is_set():
                    await asyncio.gather(*(msg.nak(delay=1.0) for msg in messages), return_exceptions=True)
                    return None
                log.warning(
                    "consent not asked for %d job(s) of %s: %s", len(jobs), self.destination.destination_id, error
                )
                await asyncio.gather(*(msg.in_progress() for msg in messages))
                await asyncio.sleep(min(backoff(attempt), 5.0))

    def _withdrawn(self) -> str:
        return f"consent to {self.destination.purpose!r} not granted at send time"

    async def _send(self, job: delivery_pb2.DeliveryJob) -> str:
        d = self.destination
        if self.kind == Kind.DESTINATION_KIND_EMAIL:
            return await self.smtp.send(d.email, job)
        body = (job.payload if self.kind == Kind.DESTINATION_KIND_WEBHOOK else job.text).encode()
        status = await self.http.post(d.webhook_url, body, job.delivery_id, self.headers)
        return f"HTTP {status}"

    async def _send_audience(self, messages: list[Msg]) -> None:
        """One request for a batch of membership changes; a person's last change wins. Until the
        request, `messages` is kept to the jobs still in hand (those acked unsent or suppressed
        are taken out), for `_sync_audience` to give back if a step fails."""
        decoded = [await _decoded(msg) for msg in messages]
        messages[:] = [msg for msg, job in zip(messages, decoded, strict=True) if job is not None]
        jobs = [job for job in decoded if job is not None]
        if not jobs:
            return
        attempt = max(attempt_of(msg) for msg in messages)
        kept = [not await self.erased.erased(job.profile_id) for job in jobs]
        gone = [msg for msg, keep in zip(messages, kept, strict=True) if not keep]
        messages[:] = [msg for msg, keep in zip(messages, kept, strict=True) if keep]
        jobs = [job for job, keep in zip(jobs, kept, strict=True) if keep]
        for msg in gone:
            await msg.ack()  # erased since it was queued: out of the batch, unrecorded
        if not jobs:
            return
        consented = await self._consented(messages, jobs)
        if consented is None:
            return
        for msg, job, ok in zip(messages, jobs, consented, strict=True):
            if not ok:
                self._finish(msg, job, attempt, delivery_pb2.DELIVERY_STATUS_SUPPRESSED, self._withdrawn())
        messages[:] = [msg for msg, ok in zip(messages, consented, strict=True) if ok]
        jobs = [job for job, ok in zip(jobs, consented, strict=True) if ok]
        if not jobs:
            return
        latest = {job.profile_id: job for job in jobs}
        body = {
            "audience": self.destination.segment_id,
            "add": sorted(p for p, job in latest.items() if not job.exited),
            "remove": sorted(p for p, job in latest.items() if job.exited),
        }
        key = "audience:" + hashlib.sha256("\n".join(sorted(j.delivery_id for j in jobs)).encode()).hexdigest()[:32]
        d = self.destination
        wait = self.bucket.wait_time()
        if wait:
            await asyncio.sleep(wait)
        with self._tracer.start_as_current_span(
            "audience sync",
            attributes={"mosaic.destination.id": d.destination_id, "messaging.batch.message_count": len(messages)},
        ):
            try:
                done = await self._post_audience(body, jobs, key)
            except Refused as error:
                self.breaker.succeeded()
                outcome, detail, dead = delivery_pb2.DELIVERY_STATUS_DEAD_LETTERED, str(error), True
            except Retryable as error:
                self.breaker.failed()
                if attempt < self.max_attempts:
                    delay = retry_delay(attempt, error.retry_after, self.retry_base)
                    await asyncio.gather(*(msg.nak(delay=delay) for msg in messages))
                    return
                outcome, detail, dead = delivery_pb2.DELIVERY_STATUS_DEAD_LETTERED, f"{error} (attempt {attempt})", True
            else:
                self.breaker.succeeded()
                outcome, detail, dead = delivery_pb2.DELIVERY_STATUS_SENT, done, False
        for msg, job in zip(messages, jobs, strict=False):
            self._finish(msg, job, attempt, outcome, detail, dead)

    async def _give_back(self, messages: list[Msg], error: Exception) -> None:
        """Nak jobs whose handling failed on a transient error: back in a second, not after
        their ack wait. A job acked or nak'ed meanwhile stays so (nats.py refuses it again); a
        nak that fails too (NATS away) leaves the job to its ack wait."""
        if not messages:
            return
        naks = await asyncio.gather(*(msg.nak(delay=1.0) for msg in messages), return_exceptions=True)
        log.warning(
            "jobs given back",
            extra={
                "fields": {
                    "destination_id": self.destination.destination_id,
                    "jobs": len(messages),
                    "given_back": sum(nak is None for nak in naks),
                    "error": repr(error),
                }
            },
        )

    async def _post_audience(self, body: dict, jobs: list[delivery_pb2.DeliveryJob], key: str) -> str:
        """Send one audience batch: to its file, or to its endpoint; what was done."""
        if self.files is not None:
            return await self.files.write(jobs, key)
        status = await self.http.post(self.destination.webhook_url, json.dumps(body).encode(), key, self.headers)
        return f"HTTP {status}"

    def _finish(
        self,
        msg: Msg,
        job: delivery_pb2.DeliveryJob,
        attempt: int,
        status: delivery_pb2.DeliveryStatus,
        detail: str,
        dead: bool = False,
    ) -> None:
        record = delivery_pb2.Delivery(
            delivery_id=job.delivery_id,
            destination_id=job.destination_id,
            profile_id=job.profile_id,
            status=status,
            attempts=attempt,
            detail=detail,
            updated_at=now(),
            trigger=job.trigger,
        )
        letter = (
            delivery_pb2.DeadLetter(delivery=record, last_error=detail, dead_at=record.updated_at, job=job)
            if dead
            else None
        )
        self._recorder.items.append(_Finished(msg, record, letter))
        self._recorder.wake.set()

    async def _record_forever(self) -> None:
        recorder = self._recorder
        while True:
            await recorder.wake.wait()
            recorder.wake.clear()
            while recorder.items:
                batch, recorder.items = recorder.items[:500], recorder.items[500:]
                try:
                    await record(self.store, self.bus, [f.record for f in batch], [f.letter for f in batch if f.letter])
                except Exception:  # noqa: BLE001 - not recorded: give the jobs back to be sent again
                    log.exception("deliveries of %s not recorded", self.destination.destination_id)
                    await asyncio.gather(*(f.msg.nak(delay=1.0) for f in batch), return_exceptions=True)
                    continue
                await _ack(batch)
            if self._stopping.is_set() and not self._tasks:
                return


async def _ack(batch: list[_Finished]) -> None:
    """Ack one after another: each is a publish that does not wait for the server, so a
    gather would only add a task per job."""
    for finished in batch:
        try:
            await finished.msg.ack()
        except Exception:  # noqa: BLE001 - not acked: the job comes back after ack_wait, sent with its key
            log.warning("job on %s not acked", finished.msg.subject, exc_info=True)


async def _always() -> bool:
    return True


async def record(
    store: DeliveryStore, bus: Bus, records: list[delivery_pb2.Delivery], letters: list[delivery_pb2.DeadLetter]
) -> None:
    """Write decided deliveries (and dead letters), then publish their outcomes."""
    if records:
        await store.save_deliveries(records)
    for letter in letters:
        await store.put_dead_letter(letter)
    outcomes = [
        (
            r.profile_id,
            delivery_outcome_pb2.DeliveryOutcome(delivery=r, decided_at=r.updated_at).SerializeToString(),
            f"{r.delivery_id}:{r.status}:{r.attempts}",
        )
        for r in records
    ]
    await bus.publish_many(topics.DELIVERY_OUTCOME, outcomes)
    for (destination_id, status), count in Counter((r.destination_id, r.status) for r in records).items():
        metrics.delivery_finished(
            destination_id, OUTCOMES.get(status, Status.Name(status).removeprefix("DELIVERY_STATUS_").lower()), count
        )
