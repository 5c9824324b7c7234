"""Quiet hours: a daily local window in which a person is not sent marketing, read in their
own time zone. Pure logic on a time passed in.

A send that falls in the window is held until the window's end (never dropped). The person's
zone is their time zone trait, an IANA name; a missing or unknown one is the deployment's
default zone. The end is a local wall-clock time: on a day the clocks jump over it, it is read
with the offset before the jump (zoneinfo's `fold=0`), which lands just after the gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from delivery_service.schedule import zone_named
from mosaic.delivery.v1 import delivery_pb2
from mosaic.platform.errors import InvalidArgument

RULE = "must be a local time HH:MM (24 h), e.g. 21:00"


@dataclass(frozen=True)
class Window:
    start: time
    end: time

    def held_until(self, zone: ZoneInfo, now: datetime) -> datetime | None:
        """The end of the window, in UTC, when `now` falls in it for someone in `zone`; else None."""
        local = now.astimezone(zone)
        clock = local.time().replace(tzinfo=None)
        if self.start < self.end:  # within one day, e.g. 12:00 to 14:00
            end_day = local.date() if self.start <= clock < self.end else None
        elif clock >= self.start:  # spans midnight, e.g. 21:00 to 08:00: before midnight
            end_day = local.date() + timedelta(days=1)
        else:  # ... or after it
            end_day = local.date() if clock < self.end else None
        if end_day is None:
            return None
        return datetime.combine(end_day, self.end, tzinfo=zone).astimezone(timezone.utc)


def window_of(quiet: delivery_pb2.QuietHours, field: str) -> Window | None:
    """The window `quiet` sets (None when unset); InvalidArgument naming the field otherwise."""
    if not quiet.start and not quiet.end:
        return None
    start = _clock(quiet.start, f"{field}.start")
    end = _clock(quiet.end, f"{field}.end")
    if start == end:
        raise InvalidArgument(f"{field}.end", "must differ from start (a window of no length, or of all day)")
    return Window(start, end)


def _clock(text: str, field: str) -> time:
    if not text:
        raise InvalidArgument(field, f"is required with quiet hours: {RULE}")
    try:
        parsed = time.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(field, f"{RULE}; got {text!r}") from None
    if parsed.tzinfo is not None or parsed.microsecond or len(text) not in (5, 8):
        raise InvalidArgument(field, f"{RULE}; got {text!r}")
    return parsed


def person_zone(traits: dict[str, Any], trait: str, default: ZoneInfo) -> ZoneInfo:
    """The person's zone from their `trait`; the default when it is missing or no IANA name."""
    value = traits.get(trait)
    return (zone_named(value) if isinstance(value, str) else None) or default
