"""Outcomes and engagement fed back into the mesh, through ingestion as an ordinary source.

`delivery.outcome` is consumed here and each decided outcome becomes a track event of the
`mosaic-delivery` source (Delivery Sent, Delivery Failed, Delivery Bounced), so profiles count
and segments use them. Engagement callbacks (opened, clicked, unsubscribed) arrive on a signed
HTTP endpoint (Standard Webhooks, with the deployment's engagement secret) and go the same way;
an unsubscribe also withdraws the destination's consent purpose.

Events name the person by an identifier identity knows (the profile's user_id, else its
anonymous_id, asked with GetIdentities and cached), since ingestion takes events about people,
not profile ids. Message ids are derived from the delivery and the outcome, so a redelivered
outcome or a callback sent twice is dropped by ingestion's deduplication.
"""

from __future__ import annotations

import logging

import grpc
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from delivery_service.consent import Answers
from delivery_service.destinations import DestinationCache
from delivery_service.store import DeliveryStore
from mosaic.consent.v1 import consent_pb2, consent_service_pb2
from mosaic.delivery.v1 import delivery_pb2
from mosaic.events.v1 import delivery_outcome_pb2, event_pb2
from mosaic.identity.v1 import identity_service_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2, source_pb2
from mosaic.platform.bus import Delivery
from mosaic.platform.errors import Unavailable
from mosaic.platform.lru import Lru

log = logging.getLogger("mosaic.delivery.feedback")
Status = delivery_pb2.DeliveryStatus
SOURCE = "mosaic-delivery"
ENGAGEMENT = {"opened": "Message Opened", "clicked": "Message Clicked", "unsubscribed": "Unsubscribed"}
OUTCOME_EVENTS = ("Delivery Sent", "Delivery Failed", "Delivery Bounced")


def outcome_event_name(delivery: delivery_pb2.Delivery) -> str | None:
    if delivery.status == Status.DELIVERY_STATUS_SENT:
        return "Delivery Sent"
    if delivery.status in (Status.DELIVERY_STATUS_DEAD_LETTERED, Status.DELIVERY_STATUS_FAILED):
        bounced = "recipient refused" in delivery.detail or delivery.detail.startswith("SMTP 5")
        return "Delivery Bounced" if bounced else "Delivery Failed"
    return None  # suppressed, queued, discarded: nothing happened at the destination


class Feedback:
    def __init__(self, ingestion, identity, answers: Answers, store: DeliveryStore, cache: DestinationCache) -> None:
        self.ingestion = ingestion
        self.identity = identity
        self.answers = answers  # the workers' consent answers, and the ConsentService stub they ask
        self.store = store
        self.cache = cache
        self._who = Lru[str, tuple[str, str]](10_000)

    async def ensure_source(self) -> None:
        """The `mosaic-delivery` source, created once (ingestion refuses unknown sources)."""
        try:
            await self.ingestion.CreateSource(
                ingestion_service_pb2.CreateSourceRequest(
                    source=source_pb2.Source(source_id=SOURCE, name="Mosaic delivery outcomes and engagement")
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

    async def on_outcome(self, outcome: delivery_outcome_pb2.DeliveryOutcome, _: Delivery) -> None:
        record = outcome.delivery
        name = outcome_event_name(record)
        if name is None:
            return
        await self.send(
            record.profile_id,
            name,
            f"delivery:{record.delivery_id}:{record.status}:{record.attempts}",
            {
                "delivery_id": record.delivery_id,
                "destination_id": record.destination_id,
                "trigger": record.trigger,
                "attempts": record.attempts,
                "detail": record.detail,
            },
        )

    async def send(self, profile_id: str, name: str, message_id: str, properties: dict) -> bool:
        """Ingest one track event about the profile's person; False when identity knows no one."""
        who = await self._identify(profile_id)
        if who is None:
            log.warning("no identifier for profile %s: %s not fed back", profile_id, name)
            return False
        event = event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, message_id=message_id, event=name)
        setattr(event, who[0], who[1])
        event.properties.update(properties)
        event.timestamp.GetCurrentTime()
        try:
            answer = await self.ingestion.Ingest(
                ingestion_service_pb2.IngestRequest(source_id=SOURCE, events=[event]), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            raise Unavailable("ingestion", f"{error.code().name}: {error.details()}") from error
        result = answer.results[0]
        if result.status == ingestion_service_pb2.EVENT_STATUS_REJECTED:
            log.error("ingestion rejected %s for %s: %s", name, profile_id, result.reason)
        return True

    async def _identify(self, profile_id: str) -> tuple[str, str] | None:
        known = self._who.get(profile_id)
        if known is not None:
            return known
        try:
            answer = await self.identity.GetIdentities(
                identity_service_pb2.GetIdentitiesRequest(profile_id=profile_id), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise Unavailable("identity", f"{error.code().name}: {error.details()}") from error
        by_type = {i.identifier.type: i.identifier.value for i in answer.identities}
        for kind in ("user_id", "anonymous_id"):
            if kind in by_type:
                self._who.put(profile_id, (kind, by_type[kind]))
                return kind, by_type[kind]
        return None

    async def engagement(self, body: dict, callback_id: str) -> tuple[int, str]:
        """Apply one verified engagement callback; (HTTP status, explanation)."""
        kind, delivery_id, profile_id = body.get("type"), body.get("delivery_id"), body.get("profile_id")
        if kind not in ENGAGEMENT:
            return 400, f"type: must be one of {', '.join(ENGAGEMENT)}"
        if not isinstance(delivery_id, str) or not isinstance(profile_id, str):
            return 400, "delivery_id and profile_id: are required strings"
        record = await self.store.delivery(profile_id, delivery_id)
        if record is None:
            return 404, f"delivery {delivery_id!r} of profile {profile_id!r} not found"
        properties = {"delivery_id": delivery_id, "destination_id": record.destination_id}
        if isinstance(body.get("url"), str):
            properties["url"] = body["url"]
        if kind == "unsubscribed":
            destination = self.cache.get(record.destination_id)
            if destination is not None:
                await self.answers.consent.SetConsent(
                    consent_service_pb2.SetConsentRequest(
                        decision=consent_pb2.ConsentDecision(
                            profile_id=profile_id, purpose=destination.purpose, granted=False, source=SOURCE
                        )
                    ),
                    timeout=5,
                )
                # This replica wrote it: its workers read it now, not when the notice comes.
                self.answers.drop([profile_id])
                properties["purpose"] = destination.purpose
        await self.send(profile_id, ENGAGEMENT[kind], f"engagement:{callback_id}", properties)
        return 202, "accepted"


class EngagementEndpoint:
    """POST /v1/engagement, Standard Webhooks-signed with the deployment's engagement secret."""

    def __init__(self, feedback: Feedback, secret: str) -> None:
        self.feedback = feedback
        self.verifier = Webhook(secret)
        self._runner: web.AppRunner | None = None

    async def start(self, port: int) -> int:
        app = web.Application(client_max_size=64 * 1024)
        app.add_routes([web.post("/v1/engagement", self.handle)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "0.0.0.0", port)
        await site.start()
        return self._runner.addresses[0][1]  # the port the OS picked for 0

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = self.verifier.verify(raw, dict(request.headers))
        except (WebhookVerificationError, ValueError) as error:
            return web.json_response({"error": f"signature: {error}"}, status=401)
        if not isinstance(body, dict):
            return web.json_response({"error": "body: must be a JSON object"}, status=400)
        try:
            status, detail = await self.feedback.engagement(body, request.headers["webhook-id"])
        except (Unavailable, grpc.aio.AioRpcError) as error:
            return web.json_response({"error": str(error)}, status=503)
        return web.json_response({"status": detail} if status < 300 else {"error": detail}, status=status)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
