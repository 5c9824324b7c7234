"""A scan page's daily counters as columns (ScanProfilesRequest.daily_counters_as_columns): a
reader loading arrays decodes six packed lists a page instead of a DailyCounter message, its
day and event strings, a counter (about 14 a profile, a third of segmentation's rebuild)."""

from __future__ import annotations

from collections.abc import Sequence

from mosaic.profile.v1 import profile_pb2
from mosaic.profile.v1 import profile_service_pb2 as pb
from profile_service.fold import epoch_day


def take_counters(page: Sequence[profile_pb2.Profile]) -> pb.DailyCounterColumns:
    """The page's daily counters as columns, taken out of its profiles."""
    indexes: list[int] = []
    days: list[int] = []
    event_indexes: list[int] = []
    counts: list[int] = []
    revenues: list[float] = []
    events: dict[str, int] = {}
    for index, profile in enumerate(page):
        counters = profile.daily_counters
        for counter in map(counters.__getitem__, counters):
            event = counter.event
            code = events.get(event)
            if code is None:
                code = events[event] = len(events)
            indexes.append(index)
            days.append(epoch_day(counter.day))
            event_indexes.append(code)
            counts.append(counter.count)
            revenues.append(counter.revenue)
        profile.ClearField("daily_counters")
    return pb.DailyCounterColumns(
        profile_indexes=indexes,
        days=days,
        event_indexes=event_indexes,
        events=list(events),
        counts=counts,
        revenues=revenues,
    )
