"""When a campaign fires: its cron expression (croniter) read in its time zone, and what a
replica should do about it now. Pure logic on times passed in, so the rules are tested on
fixed clocks.

A tick is a UTC instant, but ticks are compared by their wall-clock time too: when clocks go
back, the repeated hour's `02:30` is a second instant of a wall-clock time that already fired,
and it fires once, as cron does. A tick found later than the deployment's grace (the service
was down over it), or interrupted and found so late, is skipped, not sent hours late; only the
latest due tick is ever fired, so a long outage never turns into a burst of broadcasts.

A paused campaign fires nothing. Ticks are counted from the campaign's `active_since` (its
creation, latest resume or schedule change): what came due while it was paused is never sent;
a tick the pause interrupted (its run PAUSED) is finished on resume, within the grace.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from google.protobuf.timestamp_pb2 import Timestamp

from mosaic.delivery.v1 import campaign_pb2
from mosaic.platform.errors import InvalidArgument

RunStatus = campaign_pb2.CampaignRunStatus
CRON_RULE = (
    "must be a cron expression: 5 fields (minute hour day-of-month month day-of-week, e.g. `0 9 * * MON`),"
    " 6 with seconds first, or a macro such as `@daily`"
)


@lru_cache(maxsize=1024)
def zone_named(name: str) -> ZoneInfo | None:
    """The IANA zone of that name, or None (zoneinfo itself refuses paths as names)."""
    if not name or len(name) > 64:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder such as `America`
        return None


def _cron(expression: str, start: datetime) -> croniter:
    fields = expression.split()
    return croniter(" ".join(fields), start, second_at_beginning=len(fields) == 6)


def check_cron(expression: str, field: str) -> None:
    """Raise InvalidArgument naming `field` unless `expression` is a cron expression we fire."""
    fields = expression.split()
    macro = len(fields) == 1 and fields[0].startswith("@")
    if not (macro or len(fields) in (5, 6)):
        raise InvalidArgument(field, f"{CRON_RULE}; got {len(fields)} fields")
    try:
        _cron(expression, datetime(2000, 1, 1, tzinfo=timezone.utc)).get_next()
    except (CroniterError, ValueError, KeyError) as error:
        raise InvalidArgument(field, f"{CRON_RULE}: {error}") from None


def latest_tick(expression: str, zone: ZoneInfo, now: datetime) -> datetime:
    """The latest tick at or before `now`, in UTC."""
    # get_prev is strictly before its start: a microsecond on, so `now` itself may be a tick.
    start = (now + timedelta(microseconds=1)).astimezone(zone)
    return _cron(expression, start).get_prev(datetime).astimezone(timezone.utc)


def next_tick(expression: str, zone: ZoneInfo, after: datetime) -> datetime:
    """The first tick after `after` whose wall-clock time is later too, in UTC."""
    cron = _cron(expression, after.astimezone(zone))
    while True:
        tick = cron.get_next(datetime).astimezone(timezone.utc)
        if _later(tick, after, zone):
            return tick


def _later(tick: datetime, since: datetime, zone: ZoneInfo) -> bool:
    wall = lambda moment: moment.astimezone(zone).replace(tzinfo=None)  # noqa: E731
    return tick > since and wall(tick) > wall(since)


@dataclass(frozen=True)
class Step:
    """What a replica does about a campaign now: `fire` a new tick, `resume` one whose owner's
    lease ran out, or `skip` one found too late."""

    action: str
    tick: datetime


def counted_from(campaign: campaign_pb2.Campaign, run: campaign_pb2.CampaignRun | None) -> Timestamp:
    """The time after which the campaign's next tick is: its latest tick, or when it last became
    active, whichever is later (active_since unset: a campaign from before it, its creation)."""
    since = campaign.active_since if campaign.HasField("active_since") else campaign.created_at
    if run is not None and run.tick.ToNanoseconds() > since.ToNanoseconds():
        return run.tick
    return since


def decide(
    campaign: campaign_pb2.Campaign,
    zone: ZoneInfo,
    run: campaign_pb2.CampaignRun | None,
    now: datetime,
    grace: float,
) -> Step | None:
    if run is not None and run.status == RunStatus.CAMPAIGN_RUN_STATUS_RUNNING:
        if run.lease_until.ToDatetime(timezone.utc) > now:
            return None  # its owner is on it; a new tick waits until it is done
    if campaign.HasField("paused_at"):
        return None
    if run is not None and run.status in (RunStatus.CAMPAIGN_RUN_STATUS_RUNNING, RunStatus.CAMPAIGN_RUN_STATUS_PAUSED):
        tick = run.tick.ToDatetime(timezone.utc)  # its owner stopped, or the campaign was paused
        return Step("skip" if (now - tick).total_seconds() > grace else "resume", tick)
    since = counted_from(campaign, run).ToDatetime(timezone.utc)
    tick = latest_tick(campaign.schedule.cron, zone, now)
    if not _later(tick, since, zone):
        return None
    if (now - tick).total_seconds() > grace:
        return Step("skip", tick)
    return Step("fire", tick)
