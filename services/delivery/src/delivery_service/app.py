"""The delivery service: destinations, campaigns and dead letters over gRPC; the planner on
segment.membership and events.resolved; the campaign scheduler and the sweeper of jobs held
for quiet hours; a worker pool per destination on its job queue; delivery.outcome out."""

from __future__ import annotations

import logging

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from delivery_service.config import Settings
from delivery_service.consent import Answers
from delivery_service.destinations import DestinationCache
from delivery_service.dispatcher import Dispatcher
from delivery_service.feedback import EngagementEndpoint, Feedback
from delivery_service.held import Sweeper
from delivery_service.jobs import JobQueue
from delivery_service.planner import Planner, TimeZones
from delivery_service.privacy import DeliveryPrivacy, ErasedPeople
from delivery_service.scheduler import Scheduler, SchedulerSettings
from delivery_service.server import CampaignSettings, DeliveryServicer
from delivery_service.store import open_store
from delivery_service.worker import WorkerSettings
from mosaic.consent.v1 import consent_service_pb2_grpc
from mosaic.delivery.v1 import delivery_service_pb2, delivery_service_pb2_grpc
from mosaic.identity.v1 import identity_service_pb2_grpc
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc
from mosaic.platform import clients, retention, topics
from mosaic.platform.bus import nats_security
from mosaic.platform.privacy import Participant
from mosaic.platform.server import Runtime
from mosaic.profile.v1 import profile_service_pb2_grpc
from mosaic.segmentation.v1 import segmentation_service_pb2_grpc

log = logging.getLogger("mosaic.delivery")


def _channel(runtime: Runtime, address: str) -> grpc.aio.Channel:
    channel = clients.channel(address, runtime.settings.security, interceptors=aio_client_interceptors())
    runtime.cleanup.push_async_callback(channel.close)
    return channel


async def build(runtime: Runtime, settings: Settings) -> None:
    store = await open_store(
        settings.platform,
        log_ttl=int(settings.log_days * 86400),
        dead_letter_ttl=int(settings.dead_letter_days * 86400),
    )
    runtime.cleanup.push_async_callback(store.close)
    platform = settings.platform
    # The embedded store sweeps what expired; Cassandra drops it by TTL.
    sweep = getattr(store, "sweep", None) if platform.store != "cassandra" else None
    retention.serve(
        runtime,
        retention.Retention("delivery", platform.store, settings.retention_kinds(), sweep, settings.sweep_seconds),
    )
    queue = await JobQueue.connect(
        platform.nats_url, platform.stream_replicas, secure=nats_security(platform.nats_tls, platform.nats_credentials)
    )
    runtime.cleanup.push_async_callback(queue.close)
    consent = consent_service_pb2_grpc.ConsentServiceStub(_channel(runtime, settings.consent_address))
    answers = Answers(consent, settings.consent_cache_seconds)
    await runtime.bus.listen(topics.CONSENT_CHANGED, answers.on_changed)
    profiles = None
    if settings.profile_address:
        profiles = profile_service_pb2_grpc.ProfileServiceStub(_channel(runtime, settings.profile_address))
    segments = None
    if settings.segmentation_address:
        segments = segmentation_service_pb2_grpc.SegmentationServiceStub(
            _channel(runtime, settings.segmentation_address)
        )

    # Heard before loaded: an erasure between the two is in one or the other (or both).
    erased = ErasedPeople(store)
    await erased.follow(runtime.bus)
    cache = DestinationCache(store, settings.destinations_refresh)
    policy = settings.policy
    dispatcher = Dispatcher(
        queue,
        store,
        runtime.bus,
        WorkerSettings(
            policy=policy,
            max_attempts=settings.max_attempts,
            timeout=settings.webhook_timeout,
            concurrency=settings.concurrency,
            breaker_threshold=settings.breaker_threshold,
            breaker_cooldown=settings.breaker_cooldown,
            audience_dir=settings.audience_dir,
            smtp_ca=settings.smtp_ca,
        ),
        answers,
        erased,
    )
    cache.listen(dispatcher.update)
    await cache.load()
    cache.start()
    # Last in, first out: the workers stop (and record what they finished) before the queue,
    # the bus and the store close.
    runtime.cleanup.push_async_callback(dispatcher.close)
    runtime.cleanup.push_async_callback(cache.stop)

    servicer = DeliveryServicer(
        store,
        cache,
        queue,
        runtime.bus,
        consent,
        policy,
        CampaignSettings(segments, settings.default_zone),
        audience_files=settings.audience_dir is not None,
    )
    delivery_service_pb2_grpc.add_DeliveryServiceServicer_to_server(servicer, runtime.server)
    runtime.add_service(delivery_service_pb2.DESCRIPTOR.services_by_name["DeliveryService"].full_name)
    planner = Planner(
        cache,
        store,
        queue,
        runtime.bus,
        consent,
        profiles,
        TimeZones(settings.time_zone_trait, settings.default_zone),
        erased,
    )
    runtime.bus.consume(topics.SEGMENT_MEMBERSHIP, planner.on_membership)
    runtime.bus.consume(topics.EVENTS_RESOLVED, planner.on_event, batch_handler=planner.on_events)
    sweeper = Sweeper(store, cache, queue, runtime.bus, runtime.ownership, settings.sweep_interval)
    sweeper.start()
    runtime.cleanup.push_async_callback(sweeper.stop)
    if segments is not None:
        scheduler = Scheduler(
            store,
            cache,
            planner,
            segments,
            SchedulerSettings(interval=settings.campaign_interval, grace=settings.campaign_grace),
        )
        scheduler.start()
        runtime.cleanup.push_async_callback(scheduler.stop)
    privacy = DeliveryPrivacy(store, erased)
    Participant("delivery", runtime.bus, privacy.export, privacy.erase).start()

    if settings.feedback:
        feedback = Feedback(
            ingestion_service_pb2_grpc.IngestionServiceStub(_channel(runtime, settings.ingestion_address)),
            identity_service_pb2_grpc.IdentityServiceStub(_channel(runtime, settings.identity_address)),
            answers,
            store,
            cache,
        )
        await feedback.ensure_source()
        runtime.bus.consume(topics.DELIVERY_OUTCOME, feedback.on_outcome)
        if settings.engagement_secret:
            endpoint = EngagementEndpoint(feedback, settings.engagement_secret)
            port = await endpoint.start(settings.http_port)
            runtime.cleanup.push_async_callback(endpoint.stop)
            log.info("http serving", extra={"fields": {"service": settings.platform.service, "http_port": port}})
