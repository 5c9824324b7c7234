"""The ingestion service: Ingest and IngestStream over gRPC, the Segment-compatible HTTP API,
sources and quarantine; events.raw out, suppression.changed and consent.changed in. Ack means
stored in JetStream."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from dataclasses import dataclass

from google.protobuf import timestamp_pb2
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from ingestion_service import envelope
from ingestion_service.admin import AdminRpcs
from ingestion_service.backlog import BacklogGauge
from ingestion_service.config import Settings
from ingestion_service.consent import ConsentChanges, ConsentGate, PeopleConsent
from ingestion_service.http_api import HttpApi
from ingestion_service.intake import Intake, Tally
from ingestion_service.ratelimit import RateLimited, RateLimiter
from ingestion_service.sources import ActiveSource, SourceDirectory
from ingestion_service.store import open_store
from ingestion_service.suppression import SuppressionList
from mosaic.events.v1 import event_pb2
from mosaic.identity.v1 import identity_service_pb2_grpc
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc
from mosaic.platform import clients, tasks, topics
from mosaic.platform.errors import InvalidArgument
from mosaic.platform.server import Runtime

log = logging.getLogger("ingestion")
S = pb  # EVENT_STATUS_* as module-level ints, cheaper than the enum wrapper's lookups
# Batches of one stream being stored at once: the next is read and checked while the last
# waits for JetStream, which keeps the connection busy without unbounded memory.
STREAM_WINDOW = 4


class IngestionServicer(AdminRpcs, ingestion_service_pb2_grpc.IngestionServiceServicer):
    def __init__(self, intake: Intake, sources: SourceDirectory) -> None:
        self.intake = intake
        self.sources = sources

    async def Ingest(self, request, context):
        active = await self.intake.source(request.source_id)
        _check_batch(request.events)
        self.intake.admit(active, len(request.events))
        return pb.IngestResponse(results=await self._batch(active, request.events, 0))

    async def IngestStream(self, request_iterator, context):
        tally, problems = Tally(), []
        active: ActiveSource | None = None
        in_flight: deque[asyncio.Task[list[pb.EventResult]]] = deque()
        index = 0

        def collect(results: list[pb.EventResult]) -> None:
            tally.add(results)
            problems.extend(r for r in results if r.status in (S.EVENT_STATUS_REJECTED, S.EVENT_STATUS_QUARANTINED))

        try:
            async for request in request_iterator:
                if active is None:
                    active = await self.intake.source(request.source_id)
                elif request.source_id and request.source_id != active.source_id:
                    raise InvalidArgument("source_id", "must be the same on every message of a stream")
                _check_batch(request.events)
                await self._admit_waiting(active, len(request.events))
                in_flight.append(asyncio.create_task(self._batch(active, request.events, index)))
                index += len(request.events)
                while len(in_flight) >= STREAM_WINDOW or (in_flight and in_flight[0].done()):
                    collect(await in_flight.popleft())
            while in_flight:
                collect(await in_flight.popleft())
        finally:
            for task in in_flight:
                task.cancel()
        return pb.IngestStreamResponse(
            accepted=tally[S.EVENT_STATUS_ACCEPTED],
            duplicate=tally[S.EVENT_STATUS_DUPLICATE],
            rejected=tally[S.EVENT_STATUS_REJECTED],
            quarantined=tally[S.EVENT_STATUS_QUARANTINED],
            suppressed=tally[S.EVENT_STATUS_SUPPRESSED],
            problems=problems,
        )

    async def _admit_waiting(self, active: ActiveSource, events: int) -> None:
        # A stream has flow control: over its rate it is slowed down, not failed.
        while True:
            try:
                return self.intake.admit(active, events)
            except RateLimited as limited:
                await asyncio.sleep(limited.retry_after)

    async def _batch(self, active: ActiveSource, events, offset: int) -> list[pb.EventResult]:
        received_at = timestamp_pb2.Timestamp()
        received_at.GetCurrentTime()
        results: list[pb.EventResult] = []
        valid: list[tuple[int, event_pb2.Event]] = []
        for position, event in enumerate(events):
            try:
                envelope.prepare(event, active.source_id, received_at)
            except InvalidArgument as error:
                results.append(
                    pb.EventResult(
                        message_id=event.message_id,
                        status=S.EVENT_STATUS_REJECTED,
                        index=offset + position,
                        field=f"events[{position}].{error.field}",
                        reason=error.rule,
                    )
                )
                continue
            results.append(pb.EventResult())
            valid.append((position, event))
        for (position, _), result in zip(valid, await self.intake.ingest(active, [e for _, e in valid]), strict=False):
            result.index = offset + position
            results[position] = result
        return results


def _check_batch(events) -> None:
    if len(events) > envelope.MAX_BATCH:
        raise InvalidArgument("events", f"must hold at most {envelope.MAX_BATCH} events, holds {len(events)}")


@dataclass
class Ingestion:
    """The running parts of the service, for tests and benchmarks that drive it in-process."""

    intake: Intake
    sources: SourceDirectory
    suppression: SuppressionList
    http_port: int
    consent: ConsentGate


async def build(runtime: Runtime, settings: Settings) -> Ingestion:
    store = await open_store(settings.platform)
    runtime.cleanup.push_async_callback(store.close)
    salt = settings.suppression_salt or await store.setting("suppression_salt", secrets.token_hex(32))
    suppression = SuppressionList(store, salt)
    await suppression.load()
    refresher = asyncio.create_task(suppression.refresh_forever(settings.suppression_refresh_seconds))
    runtime.cleanup.push_async_callback(tasks.cancel, refresher)
    sources = SourceDirectory(store, settings)
    limiter = RateLimiter()
    runtime.ownership.on_members(limiter.shared_by)
    backlog = BacklogGauge(
        settings.platform.nats_url, settings.max_backlog, settings.backlog_refresh_seconds, settings.backlog_retry_after
    )
    await backlog.start()
    runtime.cleanup.push_async_callback(backlog.stop)
    people = PeopleConsent(store, max_age=settings.consent_cache_seconds)
    gate = ConsentGate(settings.consent_rules, settings.policy, people, suppression.hash)
    intake = Intake(runtime.bus, store, sources, suppression, limiter, settings, backlog, gate)
    ingestion_service_pb2_grpc.add_IngestionServiceServicer_to_server(
        IngestionServicer(intake, sources), runtime.server
    )
    runtime.add_service(pb.DESCRIPTOR.services_by_name["IngestionService"].full_name)
    http = HttpApi(intake, sources, settings.http_read_timeout)
    port = await http.start(settings.http_port, settings.platform.bind_host)
    runtime.cleanup.push_async_callback(http.stop)  # stops first: calls in flight still publish
    log.info("http serving", extra={"fields": {"service": settings.platform.service, "http_port": port}})

    async def apply_suppression(change, delivery) -> None:
        # The message names the person in clear; once the list holds the hashes (durably), it
        # is erased from the stream instead of waiting out the stream's 7 days.
        await suppression(change, delivery)
        if not change.lifted:  # an erasure: the consent kept of the person goes too
            await people.forget([d for i in change.identifiers if (d := suppression.hash(i.type, i.value))])
        await runtime.bus.erase(topics.SUPPRESSION_CHANGED, delivery.stream_sequence)

    runtime.bus.consume(topics.SUPPRESSION_CHANGED, apply_suppression)
    if settings.identity_address:
        channel = clients.channel(
            settings.identity_address, settings.platform.security, interceptors=aio_client_interceptors()
        )
        runtime.cleanup.push_async_callback(channel.close)
        identity = identity_service_pb2_grpc.IdentityServiceStub(channel)
        runtime.bus.consume(topics.CONSENT_CHANGED, ConsentChanges(people, identity, suppression.hash))
    elif gate.active:
        log.warning(
            "MOSAIC_IDENTITY_ADDRESS not set: consent rules apply the events' own consent and the defaults only,"
            " not what people decided"
        )
    return Ingestion(intake, sources, suppression, port, gate)
