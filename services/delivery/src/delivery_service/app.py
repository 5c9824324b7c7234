"""The delivery service: destinations over gRPC; segment.membership in, webhooks and
delivery.outcome out, each send allowed by ConsentService first."""

from __future__ import annotations

import asyncio
import re

import grpc
from google.protobuf import timestamp_pb2
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from mosaic.consent.v1 import consent_service_pb2, consent_service_pb2_grpc
from mosaic.delivery.v1 import delivery_pb2, delivery_service_pb2, delivery_service_pb2_grpc
from mosaic.events.v1 import delivery_outcome_pb2, segment_membership_pb2
from mosaic.platform import clients, topics
from mosaic.platform.bus import Bus, Delivery, backoff
from mosaic.platform.errors import InvalidArgument, Unavailable
from mosaic.platform.privacy import Participant
from mosaic.platform.server import Runtime
from delivery_service.config import Settings
from delivery_service.privacy import DeliveryPrivacy
from delivery_service.store import DeliveryStore, open_store
from delivery_service.webhook import Failed, Refused, WebhookSender

Status = delivery_pb2.DeliveryStatus
DESTINATION_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class DeliveryServicer(delivery_service_pb2_grpc.DeliveryServiceServicer):
    def __init__(self, store: DeliveryStore) -> None:
        self.store = store

    async def CreateDestination(self, request, context):
        d = request.destination
        if not DESTINATION_ID.match(d.destination_id):
            raise InvalidArgument("destination.destination_id", "must be 1-64 lower-case letters, digits, - or _")
        if not d.webhook_url.startswith(("http://", "https://")):
            raise InvalidArgument("destination.webhook_url", "must be an http:// or https:// URL")
        if not d.segment_id:
            raise InvalidArgument("destination.segment_id", "is required")
        if not d.purpose:
            raise InvalidArgument("destination.purpose", "is required: the consent purpose a send needs")
        await self.store.create_destination(d)
        return delivery_service_pb2.CreateDestinationResponse(destination=d)

    async def ListDestinations(self, request, context):
        return delivery_service_pb2.ListDestinationsResponse(destinations=await self.store.destinations())

    async def ListDeliveries(self, request, context):
        if not request.profile_id:
            raise InvalidArgument("profile_id", "is required")
        return delivery_service_pb2.ListDeliveriesResponse(deliveries=await self.store.deliveries(request.profile_id))


class MembershipHandler:
    """On entry into a segment, deliver to each destination triggered by it."""

    def __init__(self, store: DeliveryStore, consent, sender: WebhookSender, bus: Bus, max_attempts: int) -> None:
        self.store = store
        self.consent = consent
        self.sender = sender
        self.bus = bus
        self.max_attempts = max_attempts

    async def __call__(self, change: segment_membership_pb2.SegmentMembershipChanged, delivery: Delivery) -> None:
        if change.change != segment_membership_pb2.MEMBERSHIP_CHANGE_ENTERED:
            return
        for destination in await self.store.destinations():
            if destination.segment_id == change.segment_id:
                await self._deliver(destination, change)

    async def _deliver(self, destination: delivery_pb2.Destination, change) -> None:
        delivery_id = f"{destination.destination_id}:{change.segment_id}:{change.profile_id}:{change.profile_version}"
        trace.get_current_span().set_attribute("mosaic.destination.id", destination.destination_id)
        record = await self.store.delivery(change.profile_id, delivery_id)
        if record is None or record.status == Status.DELIVERY_STATUS_UNSPECIFIED:
            record = await self._attempt(destination, change, delivery_id, record)
            await self.store.save_delivery(record)
        outcome = delivery_outcome_pb2.DeliveryOutcome(delivery=record, decided_at=record.updated_at)
        await self.bus.publish(topics.DELIVERY_OUTCOME, change.profile_id, outcome, delivery_id)

    async def _attempt(self, destination, change, delivery_id, record) -> delivery_pb2.Delivery:
        record = record or delivery_pb2.Delivery(
            delivery_id=delivery_id, destination_id=destination.destination_id, profile_id=change.profile_id
        )
        try:
            answer = await self.consent.CheckConsent(
                consent_service_pb2.CheckConsentRequest(profile_id=change.profile_id, purpose=destination.purpose),
                timeout=5,
            )
        except grpc.aio.AioRpcError as error:
            raise Unavailable("consent", f"{error.code().name}: {error.details()}") from error
        if not answer.granted:
            return _finished(record, Status.DELIVERY_STATUS_SUPPRESSED, f"consent to {destination.purpose!r} not granted")
        body = {
            "type": "segment.entered", "delivery_id": delivery_id, "segment_id": change.segment_id,
            "profile_id": change.profile_id, "profile_version": change.profile_version,
        }
        while True:
            record.attempts += 1
            try:
                status = await self.sender.send(destination.webhook_url, body, delivery_id)
                return _finished(record, Status.DELIVERY_STATUS_SENT, f"HTTP {status}")
            except Refused as error:
                return _finished(record, Status.DELIVERY_STATUS_FAILED, str(error))
            except Failed as error:
                if record.attempts >= self.max_attempts:
                    return _finished(record, Status.DELIVERY_STATUS_FAILED, f"{error} after {record.attempts} attempts")
                await asyncio.sleep(backoff(record.attempts))


def _finished(record: delivery_pb2.Delivery, status: int, detail: str) -> delivery_pb2.Delivery:
    record.status = status
    record.detail = detail
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    record.updated_at.CopyFrom(now)
    return record


async def build(runtime: Runtime, settings: Settings) -> None:
    store = await open_store(settings.platform)
    runtime.cleanup.push_async_callback(store.close)
    channel = clients.channel(settings.consent_address, settings.platform.security, interceptors=aio_client_interceptors())
    runtime.cleanup.push_async_callback(channel.close)
    sender = WebhookSender(settings.webhook_timeout)
    runtime.cleanup.push_async_callback(sender.close)
    delivery_service_pb2_grpc.add_DeliveryServiceServicer_to_server(DeliveryServicer(store), runtime.server)
    runtime.add_service(delivery_service_pb2.DESCRIPTOR.services_by_name["DeliveryService"].full_name)
    handler = MembershipHandler(
        store, consent_service_pb2_grpc.ConsentServiceStub(channel), sender, runtime.bus, settings.max_attempts
    )
    runtime.bus.consume(topics.SEGMENT_MEMBERSHIP, handler, settings.platform.owned_partitions)
    privacy = DeliveryPrivacy(store)
    Participant("delivery", runtime.bus, privacy.export, privacy.erase).start(settings.platform.owned_partitions)
