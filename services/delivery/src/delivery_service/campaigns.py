"""Campaigns: their rules at creation, the destination a tick is rendered with, and how answers
show them (with their last run and next tick)."""

from __future__ import annotations

from datetime import timezone
from zoneinfo import ZoneInfo

import grpc

from delivery_service import schedule, templates
from delivery_service.destinations import DESTINATION_ID, Kind, kind_of
from delivery_service.quiet import window_of
from mosaic.delivery.v1 import campaign_pb2, delivery_pb2
from mosaic.platform.errors import InvalidArgument, Unavailable
from mosaic.segmentation.v1 import segmentation_service_pb2

Campaign = campaign_pb2.Campaign
OUTPUT_ONLY = ("created_at", "last_run", "next_tick")


async def validate(c: Campaign, destination: delivery_pb2.Destination | None, segments, default_zone: ZoneInfo) -> None:
    """Raise InvalidArgument naming the first field that breaks a rule; fill in defaults."""
    for name in OUTPUT_ONLY:
        c.ClearField(name)
    if not DESTINATION_ID.match(c.campaign_id):
        raise InvalidArgument("campaign.campaign_id", "must be 1-64 lower-case letters, digits, - or _")
    if not c.destination_id:
        raise InvalidArgument("campaign.destination_id", "is required: the destination the broadcast goes out over")
    if destination is None:
        raise InvalidArgument("campaign.destination_id", f"names no destination: {c.destination_id!r}")
    if kind_of(destination) == Kind.DESTINATION_KIND_AUDIENCE_SYNC:
        raise InvalidArgument(
            "campaign.destination_id", "is an audience sync, which follows its segment: a campaign sends messages"
        )
    if c.subject_template and kind_of(destination) != Kind.DESTINATION_KIND_EMAIL:
        raise InvalidArgument("campaign.subject_template", "is for e-mail destinations only")
    for field, source in (("body_template", c.body_template), ("subject_template", c.subject_template)):
        reason = templates.check(source)
        if reason:
            raise InvalidArgument(f"campaign.{field}", f"does not compile: {reason}")
    schedule.check_cron(c.schedule.cron, "campaign.schedule.cron")
    if not c.schedule.time_zone:
        c.schedule.time_zone = default_zone.key
    elif schedule.zone_named(c.schedule.time_zone) is None:
        raise InvalidArgument("campaign.schedule.time_zone", "must be an IANA time zone name, e.g. Europe/Paris")
    window_of(c.quiet_hours, "campaign.quiet_hours")
    if not c.segment_id:
        raise InvalidArgument("campaign.segment_id", "is required: the segment whose members get it")
    await _check_segment(segments, c.segment_id)


async def _check_segment(segments, segment_id: str) -> None:
    try:
        await segments.GetSegment(segmentation_service_pb2.GetSegmentRequest(segment_id=segment_id), timeout=5)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            raise InvalidArgument("campaign.segment_id", f"names no segment: {segment_id!r}") from None
        raise Unavailable("segmentation", f"{error.code().name}: {error.details()}") from error


def zone_of(c: Campaign) -> ZoneInfo:
    zone = schedule.zone_named(c.schedule.time_zone)
    assert zone is not None, "validated at creation"
    return zone


def rendered_with(destination: delivery_pb2.Destination, c: Campaign) -> delivery_pb2.Destination:
    """The destination with the campaign's templates in place of its own."""
    shown = delivery_pb2.Destination()
    shown.CopyFrom(destination)
    if c.body_template:
        shown.body_template = c.body_template
    if c.subject_template:
        shown.email.subject_template = c.subject_template
    return shown


def shown(c: Campaign, run: campaign_pb2.CampaignRun | None) -> Campaign:
    """The campaign as answers show it: with its last run and its next tick."""
    answer = Campaign()
    answer.CopyFrom(c)
    since = c.created_at
    if run is not None:
        answer.last_run.CopyFrom(run)
        since = run.tick
    after = since.ToDatetime(timezone.utc)
    answer.next_tick.FromDatetime(schedule.next_tick(c.schedule.cron, zone_of(c), after))
    return answer
