"""What segmentation reads from the profile service: the scan that rebuilds the view on start,
one profile when profile.updated left a gap; and the event series its segments read, which it
asks the profile service to keep (series.py)."""

from __future__ import annotations

import logging
import math
import time
from typing import Protocol

import grpc
import numpy as np

from mosaic.platform import clients
from mosaic.platform.config import SecuritySettings
from mosaic.platform.errors import FailedPrecondition, Unavailable
from mosaic.platform.topics import partition_of
from mosaic.profile.v1 import profile_pb2, profile_service_pb2, profile_service_pb2_grpc
from segmentation_service.columns import ColumnarView
from segmentation_service.state import ProfileState

log = logging.getLogger("segmentation.profiles")
# Profiles a ScanProfiles response carries: a stream message costs ~80 us on each side, a
# profile's decode and row ~60 us (measured), so one message per profile more than doubled a rebuild.
SCAN_PAGE = 500
SERIES_CONFIRMED_SECONDS = 60.0


class ProfileReader:
    def __init__(self, address: str, security: SecuritySettings) -> None:
        self.channel = clients.channel(address, security)
        self.stub = profile_service_pb2_grpc.ProfileServiceStub(self.channel)
        self._confirmed: dict[str, float] = {}  # series name -> when the profile service last kept it

    async def rebuild(self, view: ColumnarView, owned: frozenset[int], merged: set[str]) -> int:
        """Load the latest state of every profile of the partitions taken over into the view."""
        started, count = time.monotonic(), 0
        request = profile_service_pb2.ScanProfilesRequest(
            page_size=SCAN_PAGE,
            partition_count=view.partitions,
            partitions=sorted(owned),
            daily_counters_as_columns=True,
        )
        async for response in self.stub.ScanProfiles(request):
            now = time.time()
            if response.profiles:
                page = response.profiles
            else:  # a profile service from before pages (a rolling upgrade): all, one a message
                page = [response.profile] if partition_of(response.profile.profile_id, view.partitions) in owned else []
            for profile in page:  # counters too, from a service from before columns
                view.put(ProfileState.of_profile(profile), now, alive=profile.profile_id not in merged)
            if response.HasField("daily_counters"):
                _add_counters(view, page, response.daily_counters, now)
            count += len(page)
        log.info(
            "view rebuilt",
            extra={
                "fields": {
                    "partitions": sorted(owned),
                    "profiles": count,
                    "seconds": round(time.monotonic() - started, 2),
                }
            },
        )
        return count

    async def fetch(self, profile_id: str) -> profile_pb2.Profile | None:
        try:
            answer = await self.stub.GetProfile(profile_service_pb2.GetProfileRequest(profile_id=profile_id))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise Unavailable("profile service", error.details() or str(error.code())) from None
        # A merged profile's read answers with its survivor, which is not this profile's state.
        return answer.profile if answer.profile.profile_id == profile_id else None

    async def define_series(self, requests: list[profile_service_pb2.DefineEventSeriesRequest]) -> None:
        """Have the profile service keep these series (defining one kept already changes
        nothing). A series it confirmed in the last SERIES_CONFIRMED_SECONDS is not asked again."""
        now = time.monotonic()
        for request in requests:
            if now - self._confirmed.get(request.name, -math.inf) >= SERIES_CONFIRMED_SECONDS:
                await self.series(request)

    async def series(
        self, request: profile_service_pb2.DefineEventSeriesRequest
    ) -> profile_service_pb2.DefineEventSeriesResponse:
        """The profile service's answer for one series, defining it if it is new: how far its
        backfill is."""
        try:
            answer = await self.stub.DefineEventSeries(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable("profile service", error.details() or str(error.code())) from None
            raise FailedPrecondition(
                f"event series {request.name}", f"the profile service refused it: {error.details()}"
            ) from None
        self._confirmed[request.name] = time.monotonic()
        return answer

    async def close(self) -> None:
        await self.channel.close()


class SeriesSource(Protocol):
    async def series(
        self, request: profile_service_pb2.DefineEventSeriesRequest
    ) -> profile_service_pb2.DefineEventSeriesResponse: ...


class SeriesGate:
    """Which event series this replica's segments may be decided on: a series is ready once the
    profile service has backfilled it on every partition and this replica has handled, on each
    partition it holds, the profile.updated messages that backfill published (`handled`: the
    stream sequence each partition's profile.updated is handled through, kept by Memberships
    and set by a rebuild). Before that, a profile would look as if it had none of the series'
    past events, and a condition true without events (`sum(...) < 10`, `not ...`) would let it
    enter, to leave once its past arrives. Ready stays ready: a partition taken over later is
    rebuilt from a scan that is newer than the backfill."""

    def __init__(self, reader: SeriesSource, handled: dict[int, int]) -> None:
        self.reader = reader
        self.handled = handled
        self._backfilled: dict[str, dict[int, int]] = {}  # series -> partition -> sequence, once whole
        self._ready: set[str] = set()

    async def waiting(
        self, requests: list[profile_service_pb2.DefineEventSeriesRequest], owned: frozenset[int]
    ) -> dict[str, str]:
        """The series of these not ready yet, each with why (asking the profile service, which
        defines a series it does not keep yet)."""
        waiting = {}
        for request in requests:
            if request.name in self._ready:
                continue
            backfilled = self._backfilled.get(request.name)
            if backfilled is None:
                answer = await self.reader.series(request)
                if answer.partition_count and len(answer.backfilled) < answer.partition_count:
                    waiting[request.name] = (
                        f"the profile service has backfilled {len(answer.backfilled)} of "
                        f"{answer.partition_count} partitions"
                    )
                    continue
                # A profile service from before backfill records reports none: not waited for.
                backfilled = self._backfilled[request.name] = dict(answer.backfilled)
            behind = sorted(p for p in owned if self.handled.get(p, 0) < backfilled.get(p, 0))
            if behind:
                waiting[request.name] = f"profile.updated of partitions {behind} is still to be handled here"
            else:
                self._ready.add(request.name)
        return waiting


def _add_counters(view: ColumnarView, page, columns: profile_service_pb2.DailyCounterColumns, now: float) -> None:
    """A page's counter columns into the rows its profiles were just put in (none: erased)."""
    if not columns.profile_indexes:
        return
    rows_of_page = np.array([view.rows.get(profile.profile_id, -1) for profile in page], np.int64)
    rows = rows_of_page[np.array(columns.profile_indexes, np.int64)]
    held = rows >= 0
    view.add_counters(
        rows[held],
        np.array(columns.days, np.int64)[held],
        np.array(columns.event_indexes, np.int64)[held],
        list(columns.events),
        np.array(columns.counts, np.int64)[held],
        now,
    )
