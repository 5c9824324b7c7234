"""The consent service's gRPC API: decisions, checks, history and the configured purposes."""

from __future__ import annotations

import logging
import time
import uuid

from opentelemetry import trace

from consent_service.cache import ConsentCache
from consent_service.ledger import Ledger
from consent_service.outbox import Relay
from mosaic.consent.v1 import consent_pb2, consent_service_pb2_grpc
from mosaic.consent.v1 import consent_service_pb2 as pb
from mosaic.platform import limits, metrics
from mosaic.platform.consent import NAME as PURPOSE_NAME
from mosaic.platform.errors import InvalidArgument

log = logging.getLogger("consent")


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

    async def RepublishConsent(self, request, context):
        run = uuid.uuid4().hex[:12]
        persons = await self.ledger.republish(run)
        self.relay.kick()
        log.info("consent republished", extra={"fields": {"run": run, "persons": persons}})
        return pb.RepublishConsentResponse(persons=persons, run_id=run)

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
