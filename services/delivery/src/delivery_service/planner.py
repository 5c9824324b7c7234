"""The planner: decides what to send, and queues it; it never waits for a destination.

It consumes `segment.membership` (entries and exits) and `events.resolved` (track events),
matches them against the cached destinations' triggers (and plans each member of a campaign's
tick, for the scheduler), asks ConsentService whether the destination's purpose is granted and
whether the destination's frequency cap leaves room for the person (no: SUPPRESSED, saying
why), renders the templates with the person's traits (from the profile service, only when a
template or quiet hours need them), records the delivery as QUEUED and queues one job on the
destination's subject. A send in the person's quiet hours is held in the store instead
(SCHEDULED, until the window ends), and the sweeper queues it then. A redelivered message
finds its deliveries recorded and queues nothing new (a QUEUED one is queued again: JetStream
drops the copy by message id). Nothing is planned for an erased person (privacy.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import grpc
from google.protobuf import json_format, struct_pb2

from delivery_service import feedback, templates
from delivery_service.consent import granted
from delivery_service.destinations import DestinationCache, Kind, TriggerKind, kind_of, triggers_of
from delivery_service.jobs import JobQueue
from delivery_service.privacy import ErasedPeople
from delivery_service.quiet import Window, person_zone, window_of
from delivery_service.store import DeliveryStore
from delivery_service.worker import now, record
from mosaic.delivery.v1 import campaign_pb2, delivery_pb2
from mosaic.events.v1 import event_pb2, resolved_pb2, segment_membership_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.consumer import one_by_one
from mosaic.platform.errors import Unavailable
from mosaic.profile.v1 import profile_service_pb2

Status = delivery_pb2.DeliveryStatus
Change = segment_membership_pb2.MembershipChange
# What a frequency cap counts: deliveries decided to go out.
COUNTED = (Status.DELIVERY_STATUS_QUEUED, Status.DELIVERY_STATUS_SENT, Status.DELIVERY_STATUS_SCHEDULED)


@dataclass(frozen=True)
class TimeZones:
    """Where a person's time zone comes from: their `trait`, else the deployment's `default`."""

    trait: str = "timezone"
    default: ZoneInfo = ZoneInfo("UTC")


class Planner:
    def __init__(
        self,
        cache: DestinationCache,
        store: DeliveryStore,
        queue: JobQueue,
        bus: Bus,
        consent,
        profiles=None,
        zones: TimeZones | None = None,
        erased: ErasedPeople | None = None,
    ) -> None:
        self.cache = cache
        self.store = store
        self.queue = queue
        self.bus = bus
        self.consent = consent
        self.profiles = profiles
        self.zones = zones or TimeZones()
        self.erased = erased or ErasedPeople(store)  # not loaded: every one read from the store

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
            trigger = next(
                (t for t in triggers_of(destination) if t.kind == wanted and t.segment_id == change.segment_id), None
            )
            if trigger is not None:
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
                    quiet=window_of(trigger.quiet_hours, "quiet_hours"),
                )

    async def on_events(self, items: list[tuple[resolved_pb2.ResolvedEvent, Delivery]]) -> None:
        """A fetched batch of events.resolved: those no event trigger names (most) are passed
        over in one loop, the rest planned side by side by person, each person's in order."""
        names = {
            t.event_name
            for destination in self.cache.all()
            for t in triggers_of(destination)
            if t.kind == TriggerKind.TRIGGER_KIND_EVENT
        }
        by_person: dict[str, list[tuple[resolved_pb2.ResolvedEvent, Delivery]]] = {}
        for resolved, delivery in items:
            if resolved.event.event in names:
                by_person.setdefault(resolved.profile_id, []).append((resolved, delivery))
        plan = one_by_one(self.on_event)
        await asyncio.gather(*(plan(events) for events in by_person.values()))

    async def on_event(self, resolved: resolved_pb2.ResolvedEvent, _: Delivery) -> None:
        event = resolved.event
        if event.type != event_pb2.EVENT_TYPE_TRACK or not event.event:
            return
        if event.source_id == feedback.SOURCE and event.event in feedback.OUTCOME_EVENTS:
            return  # an outcome never triggers a delivery: no loop of deliveries about deliveries
        properties = event.properties
        for destination in self.cache.all():
            trigger = next(
                (
                    t
                    for t in triggers_of(destination)
                    if t.kind == TriggerKind.TRIGGER_KIND_EVENT
                    and t.event_name == event.event
                    and _matches(t.property_equals, properties)
                ),
                None,
            )
            if trigger is not None:
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
                    quiet=window_of(trigger.quiet_hours, "quiet_hours"),
                )

    async def on_campaign(
        self,
        campaign: campaign_pb2.Campaign,
        destination: delivery_pb2.Destination,
        profile_id: str,
        tick: datetime,
        quiet: Window | None,
    ) -> None:
        """Plan one member's delivery of a campaign's tick. Its id names the campaign, the tick
        and the person, so planning the tick again (a resumed run, another replica) is a
        redelivery: decided ones are left alone, queued ones dropped by JetStream as copies.
        `destination` carries the campaign's templates in place of its own."""
        stamp = tick.strftime("%Y%m%dT%H%M%SZ")
        facts = {
            "type": "campaign",
            "campaign_id": campaign.campaign_id,
            "segment_id": campaign.segment_id,
            "tick": tick.isoformat().replace("+00:00", "Z"),
        }
        await self._plan(
            destination,
            profile_id,
            f"{destination.destination_id}:campaign:{campaign.campaign_id}:{stamp}:{profile_id}",
            f"campaign:{campaign.campaign_id}",
            facts,
            quiet=quiet,
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
        quiet: Window | None = None,
    ) -> None:
        if await self.erased.erased(profile_id):
            return  # erased: no delivery, and no record naming them (see privacy.py)
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
            traits = await self._render(destination, kind, job, facts, needs_traits=quiet is not None)
        except (templates.RenderError, ValueError) as error:
            return await self._decide(base, Status.DELIVERY_STATUS_FAILED, str(error))
        if quiet is not None and existing is None:
            zone = person_zone(traits, self.zones.trait, self.zones.default)
            until = quiet.held_until(zone, datetime.now(timezone.utc))
            if until is not None:
                return await self._hold(base, job, until, quiet, zone)
        if existing is None:
            # Recorded before it is queued: its worker's SENT can only come after, never be
            # overwritten by this QUEUED. A redelivery finding QUEUED only queues it again.
            base.status = Status.DELIVERY_STATUS_QUEUED
            base.updated_at.CopyFrom(job.queued_at)
            await self.store.save_delivery(base)
        await self.queue.put(job)

    async def _hold(
        self, base: delivery_pb2.Delivery, job: delivery_pb2.DeliveryJob, until: datetime, quiet: Window, zone
    ) -> None:
        """Keep the job until the person's quiet hours end. Held before it is recorded: a crash
        in between leaves no SCHEDULED record without its job (the redelivery holds it again)."""
        job.not_before.FromDatetime(until)
        await self.store.hold(job, topics.partition_of(job.profile_id, self.bus.partitions))
        base.status = Status.DELIVERY_STATUS_SCHEDULED
        base.detail = (
            f"quiet hours {quiet.start:%H:%M}-{quiet.end:%H:%M} in {zone.key}: held until {until:%Y-%m-%dT%H:%M:%SZ}"
        )
        base.not_before.CopyFrom(job.not_before)
        base.updated_at.CopyFrom(job.queued_at)
        await self.store.save_delivery(base)

    async def _capped(self, destination: delivery_pb2.Destination, profile_id: str, leaving: bool) -> bool:
        """Whether the person already had the cap's number of this destination's deliveries
        (queued, held or sent) within its window; leaving an audience is never capped."""
        cap = destination.frequency_cap
        if not cap.max_deliveries or leaving:
            return False
        since = time.time_ns() - int(cap.window_seconds * 1e9)
        recent = [
            d
            for d in await self.store.deliveries(profile_id)
            if d.destination_id == destination.destination_id
            and d.status in COUNTED
            and d.updated_at.ToNanoseconds() >= since
        ]
        return len(recent) >= cap.max_deliveries

    async def _render(
        self,
        destination: delivery_pb2.Destination,
        kind: int,
        job: delivery_pb2.DeliveryJob,
        facts: dict[str, Any],
        needs_traits: bool = False,
    ) -> dict[str, Any]:
        """Render the job's payload; the traits it read (none when nothing needed them)."""
        needs_traits = (
            needs_traits
            or bool(destination.body_template or destination.email.subject_template)
            or kind == Kind.DESTINATION_KIND_EMAIL
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
        return traits

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
