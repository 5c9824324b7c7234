"""DeliveryService over gRPC: destinations, campaigns, the delivery log and the dead-letter store."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from delivery_service import campaigns, destinations
from delivery_service.consent import granted
from delivery_service.destinations import DestinationCache, Kind, kind_of
from delivery_service.jobs import JobQueue
from delivery_service.ssrf import AddressPolicy
from delivery_service.store import DeliveryStore
from delivery_service.worker import now, record
from mosaic.delivery.v1 import campaign_pb2, delivery_pb2, delivery_service_pb2_grpc
from mosaic.delivery.v1 import delivery_service_pb2 as pb
from mosaic.platform import limits
from mosaic.platform.bus import Bus
from mosaic.platform.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

Status = delivery_pb2.DeliveryStatus
MAX_PAGE = 1000


@dataclass(frozen=True)
class CampaignSettings:
    """What campaigns need of the deployment: the segmentation service (None: no campaigns)
    and the zone of a campaign that names none."""

    segments: object | None = None
    default_zone: ZoneInfo = ZoneInfo("UTC")


class DeliveryServicer(delivery_service_pb2_grpc.DeliveryServiceServicer):
    def __init__(
        self,
        store: DeliveryStore,
        cache: DestinationCache,
        queue: JobQueue,
        bus: Bus,
        consent,
        policy: AddressPolicy,
        campaign_settings: CampaignSettings | None = None,
        audience_files: bool = False,
    ) -> None:
        self.store = store
        self.cache = cache
        self.queue = queue
        self.bus = bus
        self.consent = consent
        self.policy = policy
        self.campaign_settings = campaign_settings or CampaignSettings()
        self.audience_files = audience_files

    async def CreateDestination(self, request, context):
        d = delivery_pb2.Destination()
        d.CopyFrom(request.destination)
        await destinations.validate(d, self.policy, self.audience_files)
        d.created_at.CopyFrom(now())
        await self.store.create_destination(d)
        self.cache.put(d)
        return pb.CreateDestinationResponse(destination=destinations.public(d), signing_secret=d.signing_secret)

    async def ListDestinations(self, request, context):
        size = limits.page_size(request.page_size, 100, 1000)
        stored = await self.store.destinations()  # a catalog the cache holds whole
        page, token = limits.page_of(stored, lambda d: d.destination_id, size, request.page_token)
        return pb.ListDestinationsResponse(destinations=[destinations.public(d) for d in page], next_page_token=token)

    async def GetDestination(self, request, context):
        return pb.GetDestinationResponse(
            destination=destinations.public(await self._destination(request.destination_id))
        )

    async def DeleteDestination(self, request, context):
        await self._destination(request.destination_id)
        using = [c.campaign_id for c in await self.store.campaigns() if c.destination_id == request.destination_id]
        if using:
            raise FailedPrecondition(
                f"destination {request.destination_id!r}",
                f"campaigns send over it ({', '.join(using)}): delete them first",
            )
        await self.store.delete_destination(request.destination_id)
        self.cache.remove(request.destination_id)
        await self.queue.drop(request.destination_id)
        async for letter in self._all_of(request.destination_id):
            await self.store.delete_dead_letter(letter)
        return pb.DeleteDestinationResponse()

    async def ListDeliveries(self, request, context):
        if not request.profile_id:
            raise InvalidArgument("profile_id", "is required")
        size = limits.page_size(request.page_size, 100, 1000)
        after = limits.after_key(request.page_token)
        found = await self.store.deliveries(request.profile_id, after, size + 1)
        page, token = limits.page_by_key(found, lambda d: d.delivery_id, size)
        return pb.ListDeliveriesResponse(deliveries=page, next_page_token=token)

    async def ListDeadLetters(self, request, context):
        size = request.page_size or 100
        if not 0 < size <= MAX_PAGE:
            raise InvalidArgument("page_size", f"must be between 1 and {MAX_PAGE}")
        start_destination, after = _read_token(request.page_token)
        if request.destination_id:
            ids = [request.destination_id]
        else:
            ids = sorted({d.destination_id for d in await self.store.destinations()})
        found: list[delivery_pb2.DeadLetter] = []
        for destination_id in ids:
            if destination_id < start_destination:
                continue
            cursor = after if destination_id == start_destination else ""
            found += await self.store.dead_letters(destination_id, cursor, size + 1 - len(found))
            if len(found) > size:
                break
        token = ""
        if len(found) > size:
            found = found[:size]
            token = _write_token(found[-1].delivery.destination_id, found[-1].delivery.delivery_id)
        return pb.ListDeadLettersResponse(dead_letters=found, next_page_token=token)

    async def GetDeadLetter(self, request, context):
        if not request.destination_id:
            raise InvalidArgument("destination_id", "is required")
        letter = await self.store.dead_letter(request.destination_id, request.delivery_id)
        if letter is None:
            raise NotFound("dead letter", f"{request.destination_id}/{request.delivery_id}")
        return pb.GetDeadLetterResponse(dead_letter=letter)

    async def ReplayDeadLetters(self, request, context):
        replayed = suppressed = 0
        async for letter in self._select(request.selection):
            destination = self.cache.get(letter.delivery.destination_id)
            if destination is None:
                raise FailedPrecondition(f"destination {letter.delivery.destination_id!r}", "no longer exists")
            delivery = letter.delivery
            job = letter.job
            # Consent is asked again: it may have been withdrawn while the letter waited.
            if not (kind_of(destination) == Kind.DESTINATION_KIND_AUDIENCE_SYNC and job.exited) and not await granted(
                self.consent, delivery.profile_id, destination.purpose
            ):
                delivery.status, delivery.detail = (
                    Status.DELIVERY_STATUS_SUPPRESSED,
                    f"consent to {destination.purpose!r} withdrawn before replay",
                )
                delivery.updated_at.CopyFrom(now())
                await record(self.store, self.bus, [delivery], [])
                suppressed += 1
            else:
                delivery.status, delivery.detail = Status.DELIVERY_STATUS_QUEUED, "replayed"
                delivery.updated_at.CopyFrom(now())
                await self.store.save_delivery(delivery)
                # A new message id: the first one may still be in the duplicate window.
                await self.queue.put(job, message_id=f"{delivery.delivery_id}:replay:{uuid.uuid4().hex}")
                replayed += 1
            await self.store.delete_dead_letter(letter)
        return pb.ReplayDeadLettersResponse(replayed=replayed, suppressed=suppressed)

    async def DiscardDeadLetters(self, request, context):
        discarded = 0
        async for letter in self._select(request.selection):
            delivery = letter.delivery
            delivery.status, delivery.detail = (
                Status.DELIVERY_STATUS_DISCARDED,
                f"discarded; last error: {letter.last_error}",
            )
            delivery.updated_at.CopyFrom(now())
            await record(self.store, self.bus, [delivery], [])
            await self.store.delete_dead_letter(letter)
            discarded += 1
        return pb.DiscardDeadLettersResponse(discarded=discarded)

    async def CreateCampaign(self, request, context):
        settings = self._with_segments()
        c = campaign_pb2.Campaign()
        c.CopyFrom(request.campaign)
        await campaigns.validate(
            c, await self._stored_destination(c.destination_id), settings.segments, settings.default_zone
        )
        c.created_at.CopyFrom(now())
        c.active_since.CopyFrom(c.created_at)
        await self.store.create_campaign(c)
        return pb.CreateCampaignResponse(campaign=campaigns.shown(c, None))

    async def ListCampaigns(self, request, context):
        size = limits.page_size(request.page_size, 100, 1000)
        page, token = limits.page_of(await self.store.campaigns(), lambda c: c.campaign_id, size, request.page_token)
        runs = await self.store.campaign_runs()
        return pb.ListCampaignsResponse(
            campaigns=[campaigns.shown(c, runs.get(c.campaign_id, (0, None))[1]) for c in page],
            next_page_token=token,
        )

    async def GetCampaign(self, request, context):
        c = await self._campaign(request.campaign_id)
        run = (await self.store.campaign_runs()).get(c.campaign_id, (0, None))[1]
        return pb.GetCampaignResponse(campaign=campaigns.shown(c, run))

    async def DeleteCampaign(self, request, context):
        await self._campaign(request.campaign_id)
        await self.store.delete_campaign(request.campaign_id)
        return pb.DeleteCampaignResponse()

    async def UpdateCampaign(self, request, context):
        settings = self._with_segments()
        change = request.campaign
        if not change.campaign_id:
            raise InvalidArgument("campaign.campaign_id", "is required: the campaign to change")
        paths = campaigns.mask_paths(request.update_mask)

        async def edit(current: campaign_pb2.Campaign) -> campaign_pb2.Campaign:
            updated = campaigns.changed(current, change, paths)
            destination = await self._stored_destination(updated.destination_id)
            await campaigns.validate(updated, destination, settings.segments, settings.default_zone)
            campaigns.kept_from(updated, current, now().ToDatetime(timezone.utc))
            return updated

        c = await self._change_campaign(change.campaign_id, edit)
        return pb.UpdateCampaignResponse(campaign=await self._shown(c))

    async def PauseCampaign(self, request, context):
        c = await self._change_campaign(request.campaign_id, _at_now(campaigns.paused))
        return pb.PauseCampaignResponse(campaign=await self._shown(c))

    async def ResumeCampaign(self, request, context):
        c = await self._change_campaign(request.campaign_id, _at_now(campaigns.resumed))
        return pb.ResumeCampaignResponse(campaign=await self._shown(c))

    async def _change_campaign(
        self, campaign_id: str, edit: Callable[[campaign_pb2.Campaign], Awaitable[campaign_pb2.Campaign]]
    ) -> campaign_pb2.Campaign:
        """Read, edit and write back by compare-and-set: a change made meanwhile (another
        update, a pause on another replica) is read again and edited in, never overwritten."""
        if not campaign_id:
            raise InvalidArgument("campaign_id", "is required")
        for _ in range(5):
            found = await self.store.campaign(campaign_id)
            if found is None:
                raise NotFound("campaign", campaign_id)
            current, token = found
            updated = await edit(current)
            if updated == current or await self.store.replace_campaign(updated, token):
                return updated
        raise Unavailable("store", f"campaign {campaign_id!r} kept changing while it was changed; try again")

    async def _shown(self, c: campaign_pb2.Campaign) -> campaign_pb2.Campaign:
        return campaigns.shown(c, (await self.store.campaign_runs()).get(c.campaign_id, (0, None))[1])

    def _with_segments(self) -> CampaignSettings:
        if self.campaign_settings.segments is None:
            raise FailedPrecondition(
                "campaigns", "this deployment has no segmentation service to list members (MOSAIC_SEGMENTATION_ADDRESS)"
            )
        return self.campaign_settings

    async def _stored_destination(self, destination_id: str) -> delivery_pb2.Destination | None:
        if not destination_id:
            return None
        return next((d for d in await self.store.destinations() if d.destination_id == destination_id), None)

    async def _campaign(self, campaign_id: str) -> campaign_pb2.Campaign:
        if not campaign_id:
            raise InvalidArgument("campaign_id", "is required")
        found = await self.store.campaign(campaign_id)
        if found is None:
            raise NotFound("campaign", campaign_id)
        return found[0]

    async def _destination(self, destination_id: str) -> delivery_pb2.Destination:
        if not destination_id:
            raise InvalidArgument("destination_id", "is required")
        for d in await self.store.destinations():
            if d.destination_id == destination_id:
                return d
        raise NotFound("destination", destination_id)

    async def _select(self, selection: pb.DeadLetterSelection) -> AsyncIterator[delivery_pb2.DeadLetter]:
        """The selected dead letters; the whole selection is checked before any is yielded."""
        if selection.delivery_ids:
            if not selection.destination_id:
                raise InvalidArgument("selection.destination_id", "is required with delivery_ids")
            letters = []
            for delivery_id in selection.delivery_ids:
                letter = await self.store.dead_letter(selection.destination_id, delivery_id)
                if letter is None:
                    raise NotFound("dead letter", f"{selection.destination_id}/{delivery_id}")
                letters.append(letter)
            for letter in letters:
                yield letter
        elif selection.destination_id:
            async for letter in self._all_of(selection.destination_id):
                yield letter
        elif selection.all:
            for destination in await self.store.destinations():
                async for letter in self._all_of(destination.destination_id):
                    yield letter
        else:
            raise InvalidArgument("selection", "name delivery_ids (with destination_id), a destination_id, or all")

    async def _all_of(self, destination_id: str) -> AsyncIterator[delivery_pb2.DeadLetter]:
        # Read a page ahead of what is yielded: the caller deletes what it was given.
        after = ""
        while True:
            page = await self.store.dead_letters(destination_id, after, 500)
            if not page:
                return
            after = page[-1].delivery.delivery_id
            for letter in page:
                yield letter


def _at_now(
    change: Callable[[campaign_pb2.Campaign, datetime], campaign_pb2.Campaign],
) -> Callable[[campaign_pb2.Campaign], Awaitable[campaign_pb2.Campaign]]:
    async def edit(current: campaign_pb2.Campaign) -> campaign_pb2.Campaign:
        return change(current, now().ToDatetime(timezone.utc))

    return edit


def _write_token(destination_id: str, delivery_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([destination_id, delivery_id]).encode()).decode()


def _read_token(token: str) -> tuple[str, str]:
    if not token:
        return "", ""
    try:
        destination_id, delivery_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(destination_id), str(delivery_id)
    except (ValueError, TypeError):
        raise InvalidArgument("page_token", "is not a token this service issued") from None
