"""The planner: decides what to send, and queues it; it never waits for a destination.

It consumes `segment.membership` (entries and exits) and `events.resolved` (track events),
matches them against the cached destinations' triggers, asks ConsentService whether the
destination's purpose is granted and whether the destination's frequency cap leaves room for
the person (no: SUPPRESSED, saying why), renders the templates with the person's traits (from the
profile service, only when a template needs them), records the delivery as QUEUED and queues
one job on the destination's subject. A redelivered message finds its deliveries recorded and
queues nothing new (a QUEUED one is queued again: JetStream drops the copy by message id).
"""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from delivery_service import feedback, templates
from delivery_service.consent import granted
from delivery_service.destinations import DestinationCache, Kind, TriggerKind, kind_of, triggers_of
from delivery_service.jobs import JobQueue
from delivery_service.store import DeliveryStore
from delivery_service.worker import now, record
from mosaic.delivery.v1 import delivery_pb2
from mosaic.events.v1 import event_pb2, resolved_pb2, segment_membership_pb2
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.errors import Unavailable
from mosaic.profile.v1 import profile_service_pb2

Status = delivery_pb2.DeliveryStatus
Change = segment_membership_pb2.MembershipChange


class Planner:
    def __init__(
        self, cache: DestinationCache, store: DeliveryStore, queue: JobQueue, bus: Bus, consent, profiles=None
    ) -> None:
        self.cache = cache
        self.store = store
        self.queue = queue
        self.bus = bus
        self.consent = consent
        self.profiles = profiles

    async def on_membership(self, change: segment_membership_pb2.SegmentMembershipChanged, _: Delivery) -> None:
        wanted = (
            TriggerKind.TRIGGER_KIND_SEGMENT_ENTERED
            if change.change == Change.MEMBERSHIP_CHANGE_ENTERED
            else TriggerKind.TRIGGER_KIND_SEGMENT_EXITED
        )
        direction = "entered" if wanted == TriggerKind.TRIGGER_KIND_SEGMENT_ENTERED else "exited"
        facts = {
            "type": f"segment.{direction}",
            "segment_id": change.segment_id,
            "profile_version": change.profile_version,
        }
        for destination in self.cache.all():
            if any(t.kind == wanted and t.segment_id == change.segment_id for t in triggers_of(destination)):
                delivery_id = (
                    f"{destination.destination_id}:{change.segment_id}:{change.profile_id}:{change.profile_version}"
                    if direction == "entered"
                    else f"{destination.destination_id}:{change.segment_id}:exit:{change.profile_id}:{change.profile_version}"
                )
                await self._plan(
                    destination,
                    change.profile_id,
                    delivery_id,
                    f"segment.{direction}:{change.segment_id}",
                    facts,
                    segment_id=change.segment_id,
                    exited=direction == "exited",
                )

    async def on_event(self, resolved: resolved_pb2.ResolvedEvent, _: Delivery) -> None:
        event = resolved.event
        if event.type != event_pb2.EVENT_TYPE_TRACK or not event.event:
            return
        if event.source_id == feedback.SOURCE and event.event in feedback.OUTCOME_EVENTS:
            return  # an outcome never triggers a delivery: no loop of deliveries about deliveries
        properties = event.properties
        for destination in self.cache.all():
            if any(
                t.kind == TriggerKind.TRIGGER_KIND_EVENT
                and t.event_name == event.event
                and _matches(t.property_equals, properties)
                for t in triggers_of(destination)
            ):
                facts = {
                    "type": "event",
                    "event": event.event,
                    "message_id": event.message_id,
                    "properties": json_format.MessageToDict(properties),
                }
                await self._plan(
                    destination,
                    resolved.profile_id,
                    f"{destination.destination_id}:event:{event.message_id}",
                    f"event:{event.event}",
                    facts,
                )

    async def _plan(
        self,
        destination: delivery_pb2.Destination,
        profile_id: str,
        delivery_id: str,
        trigger: str,
        facts: dict[str, Any],
        segment_id: str = "",
        exited: bool = False,
    ) -> None:
        existing = await self.store.delivery(profile_id, delivery_id)
        base = delivery_pb2.Delivery(
            delivery_id=delivery_id, destination_id=destination.destination_id, profile_id=profile_id, trigger=trigger
        )
        if existing is not None and existing.status != Status.DELIVERY_STATUS_QUEUED:
            return  # decided before: this is a redelivery
        kind = kind_of(destination)
        # Leaving an audience is always allowed; every other send needs the purpose granted.
        if not (kind == Kind.DESTINATION_KIND_AUDIENCE_SYNC and exited):
            if not await granted(self.consent, profile_id, destination.purpose):
                return await self._decide(
                    base, Status.DELIVERY_STATUS_SUPPRESSED, f"consent to {destination.purpose!r} not granted"
                )
        # A redelivery of a QUEUED one was counted when it was decided: only new ones are capped.
        if existing is None and await self._capped(
            destination, profile_id, exited and kind == Kind.DESTINATION_KIND_AUDIENCE_SYNC
        ):
            cap = destination.frequency_cap
            return await self._decide(
                base,
                Status.DELIVERY_STATUS_SUPPRESSED,
                f"frequency cap: {cap.max_deliveries} in {cap.window_seconds:g} s reached",
            )
        job = delivery_pb2.DeliveryJob(
            delivery_id=delivery_id,
            destination_id=destination.destination_id,
            profile_id=profile_id,
            trigger=trigger,
            segment_id=segment_id,
            exited=exited,
            queued_at=now(),
        )
        try:
            await self._render(destination, kind, job, facts)
        except (templates.RenderError, ValueError) as error:
            return await self._decide(base, Status.DELIVERY_STATUS_FAILED, str(error))
        if existing is None:
            # Recorded before it is queued: its worker's SENT can only come after, never be
            # overwritten by this QUEUED. A redelivery finding QUEUED only queues it again.
            base.status = Status.DELIVERY_STATUS_QUEUED
            base.updated_at.CopyFrom(job.queued_at)
            await self.store.save_delivery(base)
        await self.queue.put(job)

    async def _capped(self, destination: delivery_pb2.Destination, profile_id: str, leaving: bool) -> bool:
        """Whether the person already had the cap's number of this destination's deliveries
        (queued or sent) within its window; leaving an audience is never capped."""
        cap = destination.frequency_cap
        if not cap.max_deliveries or leaving:
            return False
        since = time.time_ns() - int(cap.window_seconds * 1e9)
        counted = (Status.DELIVERY_STATUS_QUEUED, Status.DELIVERY_STATUS_SENT)
        recent = [
            d
            for d in await self.store.deliveries(profile_id)
            if d.destination_id == destination.destination_id
            and d.status in counted
            and d.updated_at.ToNanoseconds() >= since
        ]
        return len(recent) >= cap.max_deliveries

    async def _render(
        self, destination: delivery_pb2.Destination, kind: int, job: delivery_pb2.DeliveryJob, facts: dict[str, Any]
    ) -> None:
        needs_traits = (
            bool(destination.body_template or destination.email.subject_template) or kind == Kind.DESTINATION_KIND_EMAIL
        )
        traits = await self._traits(job.profile_id) if needs_traits else {}
        context = {**facts, "profile_id": job.profile_id, "delivery_id": job.delivery_id}
        text = templates.render(destination.body_template, traits, **context)
        if kind == Kind.DESTINATION_KIND_WEBHOOK:
            body = {**facts, "delivery_id": job.delivery_id, "profile_id": job.profile_id}
            if destination.body_template:
                body["message"] = text
            job.payload = json.dumps(body, separators=(",", ":"))
        elif kind == Kind.DESTINATION_KIND_EMAIL:
            recipient = traits.get(destination.email.to_trait or "email")
            if not isinstance(recipient, str) or "@" not in recipient:
                raise ValueError(f"trait {destination.email.to_trait or 'email'!r} holds no e-mail address")
            job.recipient = recipient
            job.subject = templates.render(destination.email.subject_template, traits, **context)
            job.text = text
        else:
            job.text = text

    async def _traits(self, profile_id: str) -> dict[str, Any]:
        if self.profiles is None:
            return {}
        try:
            answer = await self.profiles.GetProfile(
                profile_service_pb2.GetProfileRequest(profile_id=profile_id), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise Unavailable("profile", f"{error.code().name}: {error.details()}") from error
        return {name: json_format.MessageToDict(trait.value) for name, trait in answer.profile.traits.items()}

    async def _decide(self, delivery: delivery_pb2.Delivery, status: delivery_pb2.DeliveryStatus, detail: str) -> None:
        delivery.status = status
        delivery.detail = detail
        delivery.updated_at.CopyFrom(now())
        await record(self.store, self.bus, [delivery], [])


def _matches(wanted, properties: struct_pb2.Struct) -> bool:
    return all(name in properties.fields and properties.fields[name] == value for name, value in wanted.items())
