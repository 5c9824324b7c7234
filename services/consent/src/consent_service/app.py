"""The consent service: the ledger over gRPC, merges and splits from identity, the cache, the outbox,
and privacy requests (PrivacyService, the receipts, and consent's own part)."""

from __future__ import annotations

import asyncio
from typing import cast

from opentelemetry.instrumentation.grpc import aio_client_interceptors

from consent_service.cache import ConsentCache
from consent_service.config import Settings
from consent_service.events import ConsentEvents, IdentityChanges
from consent_service.ledger import Ledger
from consent_service.outbox import Relay
from consent_service.privacy import ConsentParticipant, PrivacyServicer, Receipts
from consent_service.server import ConsentServicer
from consent_service.store import ConsentStore, open_store
from consent_service.sweeper import Sweeper
from mosaic.consent.v1 import consent_pb2, consent_service_pb2_grpc, privacy_service_pb2, privacy_service_pb2_grpc
from mosaic.consent.v1 import consent_service_pb2 as pb
from mosaic.identity.v1 import identity_service_pb2_grpc
from mosaic.platform import clients, topics
from mosaic.platform.consumer import one_by_one
from mosaic.platform.privacy import Participant
from mosaic.platform.server import Runtime


def components(store: ConsentStore, runtime: Runtime, settings: Settings) -> tuple[Ledger, ConsentCache, Relay]:
    ledger = Ledger(store, settings.purposes, settings.jurisdiction)
    cache = ConsentCache(ledger.view, settings.cache_size, settings.cache_seconds)
    return ledger, cache, Relay(store, runtime.bus)


async def build(runtime: Runtime, settings: Settings) -> None:
    store = await open_store(settings.platform)
    runtime.cleanup.push_async_callback(store.close)
    ledger, cache, relay = components(store, runtime, settings)
    stopping = asyncio.Event()
    sweeper = Sweeper(store, ledger, cache, relay, export_days=settings.export_days)
    background = [asyncio.create_task(relay.run(stopping)), asyncio.create_task(sweeper.run(stopping))]

    async def stop_background() -> None:
        stopping.set()
        await asyncio.gather(*background)

    runtime.cleanup.push_async_callback(stop_background)
    # Every replica hears every change, whoever made it, and drops what it cached.
    await runtime.bus.listen(topics.CONSENT_CHANGED, cache.on_changed)
    servicer = ConsentServicer(ledger, cache, relay)
    consent_service_pb2_grpc.add_ConsentServiceServicer_to_server(servicer, runtime.server)
    runtime.add_service(pb.DESCRIPTOR.services_by_name["ConsentService"].full_name)
    changes = IdentityChanges(ledger, relay)
    runtime.bus.consume(topics.IDENTITY_MERGED, changes.merged)
    runtime.bus.consume(topics.IDENTITY_SPLIT, changes.split)
    events = ConsentEvents(ledger, cache, relay, settings.policy)
    runtime.bus.consume(topics.EVENTS_RESOLVED, events, batch_handler=one_by_one(events))  # most carry no consent
    identity = None
    if settings.identity_address:
        channel = clients.channel(
            settings.identity_address, settings.platform.security, interceptors=aio_client_interceptors()
        )
        runtime.cleanup.push_async_callback(channel.close)
        identity = identity_service_pb2_grpc.IdentityServiceStub(channel)
    jurisdiction = cast(consent_pb2.Jurisdiction, settings.jurisdiction)  # the policy keeps the enum's number
    privacy = PrivacyServicer(store, relay, settings.participants, jurisdiction, identity)
    privacy_service_pb2_grpc.add_PrivacyServiceServicer_to_server(privacy, runtime.server)
    runtime.add_service(privacy_service_pb2.DESCRIPTOR.services_by_name["PrivacyService"].full_name)
    runtime.bus.consume(topics.PRIVACY_RECEIPT, Receipts(store, relay, runtime.bus))
    own = ConsentParticipant(store, cache, relay)
    Participant("consent", runtime.bus, own.export, own.erase).start()
