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
# The most checks one CheckConsents answers.
MAX_CHECKS = 1000


def _profile_id(value: str, name: str = "profile_id") -> str:
    if not value:
        raise InvalidArgument(name, "is required")
    if len(value) > 256:
        raise InvalidArgument(name, "must be at most 256 characters")
    return value


def _jurisdiction(value: int, name: str = "jurisdiction") -> int:
    if value not in consent_pb2.Jurisdiction.values():
        raise InvalidArgument(name, "is not a known Jurisdiction")
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
        self._validate(request)
        answer = await self._check(request)
        metrics.consent_checked(time.perf_counter() - started, answer.granted)
        trace.get_current_span().set_attribute("mosaic.consent.purpose", request.purpose)
        return answer

    async def CheckConsents(self, request, context):
        """Every check validated before any is answered, each answered as CheckConsent would."""
        checks = request.checks
        if not checks:
            raise InvalidArgument("checks", "must hold at least one check")
        if len(checks) > MAX_CHECKS:
            raise InvalidArgument("checks", f"must hold at most {MAX_CHECKS} checks")
        for n, check in enumerate(checks):
            self._validate(check, f"checks[{n}].")
        started = time.perf_counter()
        answers = [await self._check(check) for check in checks]
        each = (time.perf_counter() - started) / len(answers)
        for answer in answers:
            metrics.consent_checked(each, answer.granted)
        return pb.CheckConsentsResponse(answers=answers)

    def _validate(self, request, prefix: str = "") -> None:
        _profile_id(request.profile_id, prefix + "profile_id")
        if request.purpose not in self.ledger.purposes and not PURPOSE_NAME.match(request.purpose):
            self.ledger.check_purpose(request.purpose, prefix + "purpose")  # raises, naming the purposes
        _jurisdiction(request.jurisdiction, prefix + "jurisdiction")

    async def _check(self, request) -> pb.CheckConsentResponse:
        """The answer to a validated check."""
        purpose = self.ledger.purposes.get(request.purpose)
        if purpose is None:
            # A well-formed purpose this deployment does not have (_validate let it through):
            # nobody can have consented to it, so fail closed with the reason, rather than an
            # error a caller (delivery) would retry for ever.
            return pb.CheckConsentResponse(granted=False, reason="purpose not configured")
        view = await self.cache.get(request.profile_id)
        state = self.ledger.state(view, purpose, request.jurisdiction, request.global_privacy_control)
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
