"""The profile service's gRPC API: profiles, their history, computed traits and event series
(ProfileService), and the event archive (EventArchiveService). Every answer that carries profile
data is withheld by the person's consent (`Profiles.withheld`, purposes.py) here, before any
per-caller masking."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timezone

from mosaic.archive.v1 import event_archive_service_pb2, event_archive_service_pb2_grpc
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform import limits, topics
from mosaic.platform.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from mosaic.profile.v1 import profile_pb2, profile_service_pb2_grpc
from mosaic.profile.v1 import profile_service_pb2 as pb
from profile_service import computed, history
from profile_service.counter_columns import take_counters
from profile_service.fold import event_key, event_name
from profile_service.profiles import Profiles
from profile_service.store import Latest

_page_size = limits.page_size
MAX_BATCH_GET = 1000
MAX_DAYS_PER_CALL = 400
MAX_SCAN_PAGE = 1000
DAY_US = 86400 * 1_000_000


def _required(value: str, field: str) -> str:
    return limits.check_required_text(field, value)


def _now() -> float:
    return datetime.now(timezone.utc).timestamp()


def _named(definitions, name: str):
    return next((d for d in definitions if d.name == name), None)


class ProfileServicer(profile_service_pb2_grpc.ProfileServiceServicer):
    def __init__(self, profiles: Profiles) -> None:
        self.profiles = profiles
        self.store = profiles.store

    async def _latest(self, profile_id: str):
        """The stored latest state; a merged-away profile answers with its survivor."""
        latest = await self.profiles.survivor(profile_id)
        if latest is None or latest.profile.version == 0:
            raise NotFound("profile", profile_id)
        return latest.profile

    async def _shown(self, profile, latest=None):
        """A profile as an answer gives it: withheld by its person's consent of now."""
        (await self.profiles.withheld(profile.profile_id, latest)).profile(profile)
        return profile

    async def GetProfile(self, request, context):
        if request.profile_id and request.HasField("identifier"):
            raise InvalidArgument("identifier", "give either profile_id or identifier, not both")
        profile_id = limits.check_text("profile_id", request.profile_id)
        if not profile_id:
            if not request.identifier.type or not request.identifier.value:
                raise InvalidArgument("profile_id", "profile_id or identifier (type and value) is required")
            limits.check_text("identifier.type", request.identifier.type, limits.MAX_TYPE_LENGTH)
            limits.check_text("identifier.value", request.identifier.value)
            profile_id = await self.store.profile_of(request.identifier.type, request.identifier.value)
            if profile_id is None:
                raise NotFound("identifier", f"{request.identifier.type}:{request.identifier.value}")
        profile = await self._latest(profile_id)
        return pb.GetProfileResponse(profile=await self._shown(profile, Latest(profile)))

    async def BatchGetProfiles(self, request, context):
        if len(request.profile_ids) > MAX_BATCH_GET:
            raise InvalidArgument(
                "profile_ids", f"must name at most {MAX_BATCH_GET} profiles, names {len(request.profile_ids)}"
            )
        for index, profile_id in enumerate(request.profile_ids):
            limits.check_text(f"profile_ids[{index}]", profile_id)
        found = await asyncio.gather(*(self.profiles.latest(pid) for pid in request.profile_ids))
        shown = [await self._shown(latest.profile, latest) for latest in found if latest is not None]
        return pb.BatchGetProfilesResponse(profiles=shown)

    async def GetProfileAt(self, request, context):
        _required(request.profile_id, "profile_id")
        if not request.HasField("at"):
            raise InvalidArgument("at", "is required")
        limits.check_timestamp("at", request.at)
        at = request.at
        if at.seconds > _now():  # the future is the latest state: never a walk back from year 2200
            at = type(at)()
            at.GetCurrentTime()
        return pb.GetProfileAtResponse(profile=await self._shown(await self.profiles.at_time(request.profile_id, at)))

    async def ListSnapshots(self, request, context):
        _required(request.profile_id, "profile_id")
        size = _page_size(request.page_size, 50, 500)
        token = limits.page_token(request.page_token) if request.page_token else None
        # A token past the latest version would walk every empty bucket down to it.
        below = (await self._latest(request.profile_id)).version + 1
        if token is not None:
            below = min(below, token)
        snapshots = await self.store.list_snapshots(request.profile_id, below, size)
        withheld = await self.profiles.withheld(request.profile_id)
        for snapshot in snapshots:
            snapshot.ClearField("profile")  # the stored full state or delta is not part of a listing
            withheld.changes(snapshot.changes)
        last = snapshots[-1].version if snapshots else 1
        token = str(last) if len(snapshots) == size and last > 1 else ""
        return pb.ListSnapshotsResponse(snapshots=snapshots, next_page_token=token)

    async def DiffSnapshots(self, request, context):
        _required(request.profile_id, "profile_id")
        if not 1 <= request.from_version <= request.to_version:
            raise InvalidArgument("from_version", "must be at least 1 and at most to_version")
        latest = await self._latest(request.profile_id)
        if request.to_version > latest.version:  # a rebuild never walks down from a version never written
            raise NotFound("profile version", f"{request.profile_id}@{request.to_version}")
        old = await self.profiles.at_version(request.profile_id, request.from_version)
        new = await self.profiles.at_version(request.profile_id, request.to_version)
        changes = history.diff(old, new)
        (await self.profiles.withheld(request.profile_id)).changes(changes)
        return pb.DiffSnapshotsResponse(changes=changes)

    async def ScanProfiles(self, request, context):
        keep = _partition_filter(request.partition_count, request.partitions)
        if not 0 <= request.page_size <= MAX_SCAN_PAGE:
            raise InvalidArgument("page_size", f"must be between 1 and {MAX_SCAN_PAGE} (or 0: one profile a response)")
        if request.daily_counters_as_columns and not request.page_size:
            raise InvalidArgument("daily_counters_as_columns", "needs page_size: the columns are a page's")

        if not request.page_size:
            async for profile, merged_into in self.store.scan(keep):
                yield pb.ScanProfilesResponse(
                    profile=await self._shown(profile, Latest(profile, merged_into=merged_into))
                )
            return

        def done(page: pb.ScanProfilesResponse) -> pb.ScanProfilesResponse:
            if request.daily_counters_as_columns:
                page.daily_counters.CopyFrom(take_counters(page.profiles))
            return page

        # Each profile is decoded straight into the page being filled (a copy there cost as much
        # as the decode): `filling` holds that page, a new one once the last has gone.
        filling = [pb.ScanProfilesResponse()]
        async for profile, merged_into in self.store.scan(keep, into=lambda: filling[0].profiles.add()):
            await self._shown(profile, Latest(profile, merged_into=merged_into))
            if len(filling[0].profiles) == request.page_size:
                yield done(filling[0])
                filling[0] = pb.ScanProfilesResponse()
        if filling[0].profiles:
            yield done(filling[0])

    async def UpsertTraits(self, request, context):
        _required(request.profile_id, "profile_id")
        _required(request.source_id, "source_id")
        _required(request.request_id, "request_id")
        if not request.traits.fields:
            raise InvalidArgument("traits", "must set at least one trait")
        limits.check_struct("traits", request.traits)
        await self._latest(request.profile_id)
        # Travels as an event through the profile's partition, so its one writer applies it in
        # order with the events; the request id makes a retried call a no-op.
        message_id = f"upsert:{request.source_id}:{request.request_id}"
        event = event_pb2.Event(
            type=event_pb2.EVENT_TYPE_IDENTIFY,
            message_id=message_id,
            traits=request.traits,
            source_id=request.source_id,
        )
        event.timestamp.GetCurrentTime()
        event.received_at.CopyFrom(event.timestamp)
        resolved = resolved_pb2.ResolvedEvent(profile_id=request.profile_id, event=event)
        await self.profiles.bus.publish(topics.EVENTS_RESOLVED, request.profile_id, resolved, event_key(event))
        deadline = time.monotonic() + 10
        while await self.store.applied_version(request.profile_id, event_key(event)) is None:
            if time.monotonic() > deadline:
                raise Unavailable("profile", "the write is queued but not applied yet; retry with the same request_id")
            await asyncio.sleep(0.01)
        latest = await self.store.latest(request.profile_id)
        return pb.UpsertTraitsResponse(profile=await self._shown(latest.profile, latest))

    async def CreateComputedTrait(self, request, context):
        definition = request.definition
        if definition.aggregation == profile_pb2.AGGREGATION_DAILY:
            raise InvalidArgument("definition.aggregation", "is defined with DefineEventSeries")
        computed.validate(definition)
        await self._define(definition)
        return pb.CreateComputedTraitResponse(definition=definition)

    async def DefineEventSeries(self, request, context):
        definition = profile_pb2.ComputedTraitDefinition(
            name=request.name,
            aggregation=profile_pb2.AGGREGATION_DAILY,
            event=request.event,
            property=request.property,
            filters=request.filters,
        )
        computed.validate(definition, prefix="")
        # A reader defines what it reads whenever it needs it: most calls find the series in the
        # catalog the folds read, and write nothing.
        stored = _named(await self.profiles.definitions.all(), definition.name)
        if stored is None:
            try:
                await self._define(definition)
            except AlreadyExists:  # defined since the catalog was read (another replica)
                stored = _named(await self.store.definitions(), definition.name)
                if stored is None:
                    raise  # and deleted since; the caller's retry defines it
            else:
                return await self._series(definition, created=True)
        computed.same_series(stored, definition)
        return await self._series(stored)

    async def _series(self, definition, created: bool = False) -> pb.DefineEventSeriesResponse:
        """A series with how far its backfill is: one read of its records (readers ask often)."""
        return pb.DefineEventSeriesResponse(
            definition=definition,
            created=created,
            backfilled=await self.store.backfills(definition),
            partition_count=self.profiles.bus.partitions,
        )

    async def _define(self, definition) -> None:
        """Store a new definition and start its backfill from the archive."""
        definition.created_at.GetCurrentTime()
        await self.store.create_definition(definition)
        self.profiles.definitions.invalidate()
        await self.profiles.definitions.all()  # sees the new definition and starts its backfill

    async def ListComputedTraits(self, request, context):
        size = limits.page_size(request.page_size, 100, 1000)
        stored = await self.profiles.definitions.all()  # a catalog held whole, refreshed from the store
        definitions, token = limits.page_of(stored, lambda d: d.name, size, request.page_token)
        return pb.ListComputedTraitsResponse(definitions=definitions, next_page_token=token)

    async def DeleteComputedTrait(self, request, context):
        if not await self.store.delete_definition(_required(request.name, "name")):
            raise NotFound("computed trait", request.name)
        self.profiles.definitions.invalidate()
        return pb.DeleteComputedTraitResponse()


class ArchiveServicer(event_archive_service_pb2_grpc.EventArchiveServiceServicer):
    def __init__(self, profiles: Profiles) -> None:
        self.profiles = profiles
        self.store = profiles.store
        self.retention = profiles.settings.archive_days * 86400

    async def ListEvents(self, request, context):
        _required(request.profile_id, "profile_id")
        size = _page_size(request.page_size, 100, 1000)
        for name in ("since", "until"):
            if request.HasField(name):
                limits.check_timestamp(name, getattr(request, name))
        now = _now()
        since = request.since.ToMicroseconds() if request.HasField("since") else int((now - self.retention) * 1e6)
        until = request.until.ToMicroseconds() if request.HasField("until") else int((now + 86400) * 1e6)
        if request.page_token:
            until = min(until, limits.page_token(request.page_token))
        # The archive is read a day at a time: one call walks at most MAX_DAYS_PER_CALL days
        # (a range of centuries would be tens of thousands of reads) and the token goes on.
        floor = max(since, until - MAX_DAYS_PER_CALL * DAY_US)
        found = []
        # Filtering by name happens after the read, so read pages until this one is full.
        while len(found) < size and until > floor:
            batch = await self.store.events(request.profile_id, floor, until, size)
            if not batch:
                until = floor
                break
            found.extend(r.event for r in batch if not request.event or event_name(r.event) == request.event)
            until = batch[-1].event.timestamp.ToMicroseconds()
            if len(batch) < size:
                until = floor
        token = str(until) if until > since else ""
        withheld = await self.profiles.withheld(request.profile_id)
        for event in found[:size]:
            withheld.event(event)
        return event_archive_service_pb2.ListEventsResponse(events=found[:size], next_page_token=token)


def _partition_filter(count: int, partitions) -> Callable[[str], bool] | None:
    """Which profile ids a scan of some partitions keeps (None: all)."""
    if not count and not partitions:
        return None
    if count <= 0:
        raise InvalidArgument("partition_count", "must be set (the bus's partition count) when partitions are")
    if not partitions:
        raise InvalidArgument("partitions", "must name at least one partition when partition_count is set")
    for index, partition in enumerate(partitions):
        if not 0 <= partition < count:
            raise InvalidArgument(f"partitions[{index}]", f"must be between 0 and {count - 1}, is {partition}")
    kept = frozenset(partitions)
    return lambda profile_id: topics.partition_of(profile_id, count) in kept
