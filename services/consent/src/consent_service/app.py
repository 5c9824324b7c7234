"""The consent service: the ledger over gRPC, merges and splits from identity, the cache, the outbox,
and privacy requests (PrivacyService, the receipts, and consent's own part)."""

from __future__ import annotations

import asyncio
import time
from typing import cast

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from consent_service.cache import ConsentCache
from consent_service.config import Settings
from consent_service.events import ConsentEvents
from consent_service.ledger import Ledger
from consent_service.outbox import Relay
from consent_service.privacy import ConsentParticipant, PrivacyServicer, Receipts
from consent_service.store import ConsentStore, open_store
from consent_service.sweeper import Sweeper
from mosaic.consent.v1 import consent_pb2, consent_service_pb2_grpc, privacy_service_pb2, privacy_service_pb2_grpc
from mosaic.consent.v1 import consent_service_pb2 as pb
from mosaic.identity.v1 import identity_service_pb2_grpc
from mosaic.platform import clients, limits, metrics, topics
from mosaic.platform.bus import Delivery
from mosaic.platform.consent import NAME as PURPOSE_NAME
from mosaic.platform.errors import InvalidArgument
from mosaic.platform.privacy import Participant
from mosaic.platform.server import Runtime


def _profile_id(value: str, name: str = "profile_id") -> str:
    if not value:
        raise InvalidArgument(name, "is required")
    if len(value) > 256:
        raise InvalidArgument(name, "must be at most 256 characters")
    return value


def _jurisdiction(value: int) -> int:
    if value not in consent_pb2.Jurisdiction.values():
        raise InvalidArgument("jurisdiction", "is not a known Jurisdiction")
    return value


class ConsentServicer(consent_service_pb2_grpc.ConsentServiceServicer):
    def __init__(self, ledger: Ledger, cache: ConsentCache, relay: Relay) -> None:
        self.ledger = ledger
        self.cache = cache
        self.relay = relay

    async def SetConsent(self, request, context):
        decisions = []
        if request.decision.purpose or not request.global_privacy_control:
            decisions.append(self.ledger.normalise(request.decision))
        if request.global_privacy_control:
            profile_id = _profile_id(request.decision.profile_id, "decision.profile_id")
            decisions += self.ledger.gpc_denials(profile_id, request.decision.source or "gpc", request.decision.actor)
        await self.record(decisions)
        answer = pb.SetConsentResponse(recorded=decisions)
        if request.decision.purpose or not request.global_privacy_control:
            answer.decision.CopyFrom(decisions[0])
        return answer

    async def record(self, decisions: list[consent_pb2.ConsentDecision]) -> None:
        # Stored with its announcement first; published by the relay, which retries.
        profiles = await self.ledger.record(decisions)
        self.cache.drop([*profiles, *(d.profile_id for d in decisions)])
        self.relay.kick()

    async def CheckConsent(self, request, context):
        started = time.perf_counter()
        answer = await self._check(request)
        metrics.consent_checked(time.perf_counter() - started, answer.granted)
        return answer

    async def _check(self, request) -> pb.CheckConsentResponse:
        profile_id = _profile_id(request.profile_id)
        if request.purpose not in self.ledger.purposes and PURPOSE_NAME.match(request.purpose):
            # Nobody can have consented to a purpose this deployment does not have: fail closed
            # with the reason, rather than an error a caller (delivery) would retry for ever.
            return pb.CheckConsentResponse(granted=False, reason="purpose not configured")
        purpose = self.ledger.check_purpose(request.purpose, "purpose")
        view = await self.cache.get(profile_id)
        state = self.ledger.state(view, purpose, _jurisdiction(request.jurisdiction), request.global_privacy_control)
        trace.get_current_span().set_attribute("mosaic.consent.purpose", request.purpose)
        answer = pb.CheckConsentResponse(granted=state.granted, by_default=state.by_default, reason=state.reason)
        if state.HasField("decision"):
            answer.decision.CopyFrom(state.decision)
        return answer

    async def GetConsentState(self, request, context):
        view = await self.cache.get(_profile_id(request.profile_id))
        jurisdiction = _jurisdiction(request.jurisdiction)
        return pb.GetConsentStateResponse(
            person_id=view.head,
            purposes=[self.ledger.state(view, p, jurisdiction) for p in self.ledger.purposes.values()],
        )

    async def ListConsentHistory(self, request, context):
        decisions, token = await self.ledger.history(
            _profile_id(request.profile_id), request.page_size, request.page_token
        )
        return pb.ListConsentHistoryResponse(decisions=decisions, next_page_token=token)

    async def ListPurposes(self, request, context):
        # In the order configured; the token is the position of the next page's first purpose.
        size = limits.page_size(request.page_size, 100, 1000)
        start = limits.page_token(request.page_token) if request.page_token else 0
        if start < 0:
            raise InvalidArgument("page_token", "is not a token this service issued")
        purposes = [
            pb.Purpose(
                name=p.name,
                sale_or_sharing=p.sale_or_sharing,
                gdpr_default=p.gdpr_default,
                ccpa_default=p.ccpa_default,
            )
            for p in self.ledger.purposes.values()
        ]
        more = len(purposes) > start + size
        return pb.ListPurposesResponse(
            purposes=purposes[start : start + size], next_page_token=str(start + size) if more else ""
        )


class IdentityChanges:
    """The consumer of identity.merged and identity.split: consent follows the person."""

    def __init__(self, ledger: Ledger, relay: Relay) -> None:
        self.ledger = ledger
        self.relay = relay

    async def merged(self, merge, delivery: Delivery) -> None:
        if await self.ledger.merged(merge):
            self.relay.kick()

    async def split(self, split, delivery: Delivery) -> None:
        if await self.ledger.split(split):
            self.relay.kick()


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
    runtime.bus.consume(topics.EVENTS_RESOLVED, ConsentEvents(ledger, cache, relay, settings.policy))
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
