"""The ingestion service: Ingest and IngestStream over gRPC, the Segment-compatible HTTP API,
sources and quarantine; events.raw out, suppression.changed and consent.changed in. Ack means
stored in JetStream."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from opentelemetry.instrumentation.grpc import aio_client_interceptors

from ingestion_service.backlog import BacklogGauge
from ingestion_service.config import Settings
from ingestion_service.consent import ConsentChanges, ConsentGate, PeopleConsent
from ingestion_service.http_api import HttpApi
from ingestion_service.intake import Intake
from ingestion_service.ratelimit import RateLimiter
from ingestion_service.server import IngestionServicer
from ingestion_service.sources import SourceDirectory
from ingestion_service.store import open_store
from ingestion_service.suppression import SuppressionList
from mosaic.identity.v1 import identity_service_pb2_grpc
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc
from mosaic.platform import clients, tasks, topics
from mosaic.platform.server import Runtime

log = logging.getLogger("ingestion")


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
