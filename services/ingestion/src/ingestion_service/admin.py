"""The management RPCs of IngestionService: sources and their quarantine."""

from __future__ import annotations

from ingestion_service import envelope
from ingestion_service.intake import Intake
from ingestion_service.sources import SourceDirectory, check_source_id
from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.platform import limits
from mosaic.platform.errors import InvalidArgument, NotFound

S = pb  # EVENT_STATUS_* as module-level ints, cheaper than the enum wrapper's lookups
MAX_GRACE_SECONDS = 90 * 86400  # how long an old write key may keep working after a rotation
# A replay that ends in one of these takes the event out of the quarantine; a suppressed
# person's event must not be kept either.
_LEAVES_QUARANTINE = (S.EVENT_STATUS_ACCEPTED, S.EVENT_STATUS_DUPLICATE, S.EVENT_STATUS_SUPPRESSED)


class AdminRpcs:
    """Sources CRUD and key rotation; quarantine list, get, replay and discard."""

    sources: SourceDirectory
    intake: Intake

    async def CreateSource(self, request, context):
        return pb.CreateSourceResponse(source=await self.sources.create(request.source))

    async def GetSource(self, request, context):
        return pb.GetSourceResponse(source=await self.sources.get(request.source_id))

    async def ListSources(self, request, context):
        sources, token = await self.sources.page(limits.page_size(request.page_size, 100, 1000), request.page_token)
        return pb.ListSourcesResponse(sources=sources, next_page_token=token)

    async def UpdateSource(self, request, context):
        return pb.UpdateSourceResponse(source=await self.sources.update(request.source, request.update_mask))

    async def RotateWriteKey(self, request, context):
        grace = None
        if request.HasField("grace_period"):
            period = request.grace_period
            if not 0 <= period.seconds <= MAX_GRACE_SECONDS or not 0 <= period.nanos < 10**9:
                raise InvalidArgument("grace_period", f"must be between 0 and {MAX_GRACE_SECONDS // 86400} days")
            grace = period.seconds + period.nanos / 1e9
        key, source = await self.sources.rotate(request.source_id, grace)
        return pb.RotateWriteKeyResponse(write_key=key, source=source)

    async def ListQuarantinedEvents(self, request, context):
        check_source_id(request.source_id)
        if not 0 <= request.page_size <= 500:
            raise InvalidArgument("page_size", "must be between 0 and 500")
        size = request.page_size or 50
        after = limits.after_key(request.page_token)
        found = await self.intake.store.list_quarantined(request.source_id, after, size + 1)
        kept, token = limits.page_by_key(found, lambda k: k.event.message_id, size)
        return pb.ListQuarantinedEventsResponse(events=kept, next_page_token=token)

    async def GetQuarantinedEvent(self, request, context):
        return pb.GetQuarantinedEventResponse(event=await self._kept(request.source_id, request.message_id))

    async def ReplayQuarantinedEvent(self, request, context):
        kept = await self._kept(request.source_id, request.message_id)
        event = kept.event
        if request.HasField("event"):
            event = _fixed(request.event, kept.event)
        active = await self.intake.source(request.source_id)
        (result,) = await self.intake.ingest(active, [event])
        if result.status in _LEAVES_QUARANTINE:
            await self.intake.store.delete_quarantined(request.source_id, request.message_id)
        return pb.ReplayQuarantinedEventResponse(result=result)

    async def DiscardQuarantinedEvent(self, request, context):
        await self._kept(request.source_id, request.message_id)
        await self.intake.store.delete_quarantined(request.source_id, request.message_id)
        return pb.DiscardQuarantinedEventResponse()

    async def _kept(self, source_id: str, message_id: str):
        check_source_id(source_id)
        limits.check_required_text("message_id", message_id)
        kept = await self.intake.store.get_quarantined(source_id, message_id)
        if kept is None:
            raise NotFound("quarantined event", f"{source_id}/{message_id}")
        return kept


def _fixed(fixed: event_pb2.Event, kept: event_pb2.Event) -> event_pb2.Event:
    """The fixed copy of a kept event: same message id, source and arrival; valid envelope."""
    if fixed.message_id and fixed.message_id != kept.message_id:
        raise InvalidArgument("event.message_id", "must be unset or the kept event's")
    event = event_pb2.Event()
    event.CopyFrom(fixed)
    event.message_id = kept.message_id
    event.source_id = kept.source_id
    event.received_at.CopyFrom(kept.received_at)
    if not event.HasField("timestamp"):  # the kept event's times, as ingestion set them
        event.timestamp.CopyFrom(kept.timestamp)
        if kept.HasField("original_timestamp"):
            event.original_timestamp.CopyFrom(kept.original_timestamp)
    try:
        envelope.validate(event)
    except InvalidArgument as error:
        raise InvalidArgument(f"event.{error.field}", error.rule) from None
    return event
