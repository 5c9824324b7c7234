"""The consent service: SetConsent, CheckConsent and ListConsentHistory; publishes consent.changed."""

from __future__ import annotations

import re

from opentelemetry import trace

from mosaic.consent.v1 import consent_service_pb2, consent_service_pb2_grpc
from mosaic.events.v1 import consent_changed_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.errors import InvalidArgument
from mosaic.platform.server import Runtime
from consent_service.config import Settings
from consent_service.store import ConsentStore, open_store

PURPOSE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _check_subject(profile_id: str, purpose: str, prefix: str = "") -> None:
    if not profile_id:
        raise InvalidArgument(f"{prefix}profile_id", "is required")
    if not PURPOSE.match(purpose):
        raise InvalidArgument(f"{prefix}purpose", "must be 1-64 lower-case letters, digits or _, starting with a letter")


class ConsentServicer(consent_service_pb2_grpc.ConsentServiceServicer):
    def __init__(self, store: ConsentStore, bus: Bus) -> None:
        self.store = store
        self.bus = bus

    async def SetConsent(self, request, context):
        decision = request.decision
        _check_subject(decision.profile_id, decision.purpose, "decision.")
        if not decision.HasField("decided_at"):
            decision.decided_at.GetCurrentTime()
        decision.decided_at.FromMilliseconds(decision.decided_at.ToMilliseconds())  # what the ledger keeps
        decision.source = decision.source or "api"
        await self.store.record(decision)
        # Recorded first, then announced: a failed publish is retried by the caller, and
        # re-recording the same decision is a no-op.
        message_id = f"{decision.profile_id}:{decision.purpose}:{decision.decided_at.ToMicroseconds()}"
        await self.bus.publish(
            topics.CONSENT_CHANGED, decision.profile_id, consent_changed_pb2.ConsentChanged(decision=decision), message_id
        )
        return consent_service_pb2.SetConsentResponse(decision=decision)

    async def CheckConsent(self, request, context):
        _check_subject(request.profile_id, request.purpose)
        trace.get_current_span().set_attribute("mosaic.consent.purpose", request.purpose)
        decision = await self.store.latest(request.profile_id, request.purpose)
        if decision is None:
            return consent_service_pb2.CheckConsentResponse(granted=False)  # no consent recorded: opt-in
        return consent_service_pb2.CheckConsentResponse(granted=decision.granted, decision=decision)

    async def ListConsentHistory(self, request, context):
        if not request.profile_id:
            raise InvalidArgument("profile_id", "is required")
        return consent_service_pb2.ListConsentHistoryResponse(decisions=await self.store.history(request.profile_id))


async def build(runtime: Runtime, settings: Settings) -> None:
    store = await open_store(settings.platform)
    runtime.cleanup.push_async_callback(store.close)
    consent_service_pb2_grpc.add_ConsentServiceServicer_to_server(ConsentServicer(store, runtime.bus), runtime.server)
    runtime.add_service(consent_service_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name)
