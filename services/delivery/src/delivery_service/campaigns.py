"""Campaigns: their rules at creation and at each change, the destination a tick is rendered
with, and how answers show them (with their last run and next tick).

A campaign counts its ticks from `active_since`: its creation, its latest resume, the latest
change of its schedule. So resuming never sends late what came due while it was paused, and a
new schedule never fires a tick it would have had in the past; only a tick the pause cut short
is finished on resume (the scheduler's PAUSED run, within the deployment's grace).
"""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import grpc
from google.protobuf import field_mask_pb2

from delivery_service import schedule, templates
from delivery_service.destinations import DESTINATION_ID, Kind, kind_of
from delivery_service.quiet import window_of
from mosaic.delivery.v1 import campaign_pb2, delivery_pb2
from mosaic.platform.errors import InvalidArgument, Unavailable
from mosaic.segmentation.v1 import segmentation_service_pb2

Campaign = campaign_pb2.Campaign
OUTPUT_ONLY = ("created_at", "last_run", "next_tick", "paused_at", "active_since")
# Set by the service and kept across an update.
KEPT = ("created_at", "paused_at", "active_since")
# What UpdateCampaign's mask may name; the first ones are what an empty mask means.
WHOLE = ("name", "destination_id", "segment_id", "schedule", "body_template", "subject_template", "quiet_hours")
UPDATABLE = (*WHOLE, "schedule.cron", "schedule.time_zone", "quiet_hours.start", "quiet_hours.end")


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


def mask_paths(mask: field_mask_pb2.FieldMask) -> list[str]:
    """The fields an update changes; InvalidArgument naming update_mask for one it may not."""
    for path in mask.paths:
        if path not in UPDATABLE:
            raise InvalidArgument("update_mask", f"may name {', '.join(UPDATABLE)}; not {path!r}")
    return list(mask.paths) or list(WHOLE)


def changed(current: Campaign, change: Campaign, paths: list[str]) -> Campaign:
    """`current` with the fields `paths` names taken from `change` (named and unset: cleared)."""
    updated = Campaign()
    updated.CopyFrom(current)
    field_mask_pb2.FieldMask(paths=paths).MergeMessage(change, updated, replace_message_field=True)
    for name in ("schedule", "quiet_hours"):
        if name in paths and updated.HasField(name) and getattr(updated, name).ByteSize() == 0:
            updated.ClearField(name)  # given empty ({} in JSON): cleared, as if unset
    return updated


def kept_from(updated: Campaign, current: Campaign, now: datetime) -> None:
    """Put back what the service set on `current` (validate clears it); a schedule that changed
    counts its ticks from now."""
    for name in KEPT:
        if current.HasField(name):
            getattr(updated, name).CopyFrom(getattr(current, name))
    if updated.schedule != current.schedule:
        updated.active_since.FromDatetime(now)


def paused(current: Campaign, now: datetime) -> Campaign:
    if current.HasField("paused_at"):
        return current
    updated = Campaign()
    updated.CopyFrom(current)
    updated.paused_at.FromDatetime(now)
    return updated


def resumed(current: Campaign, now: datetime) -> Campaign:
    if not current.HasField("paused_at"):
        return current
    updated = Campaign()
    updated.CopyFrom(current)
    updated.ClearField("paused_at")
    updated.active_since.FromDatetime(now)
    return updated


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
    """The campaign as answers show it: with its last run and its next tick (none while paused)."""
    answer = Campaign()
    answer.CopyFrom(c)
    if run is not None:
        answer.last_run.CopyFrom(run)
    if not c.HasField("paused_at"):
        after = schedule.counted_from(c, run).ToDatetime(timezone.utc)
        answer.next_tick.FromDatetime(schedule.next_tick(c.schedule.cron, zone_of(c), after))
    return answer
