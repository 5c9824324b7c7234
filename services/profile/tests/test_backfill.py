"""Backfills of stored definitions per partition of the bus, recorded and resumed, against a real
nats-server and the embedded store: through the whole service, and through replicas built of its
parts (Profiles, Backfiller, a real Ownership each) whose rounds the test runs itself."""

import asyncio
import contextlib
import itertools
from collections import Counter

import grpc

from mosaic.events.v1 import event_pb2, profile_updated_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.ownership import Ownership, assign
from mosaic.platform.server import Service
from mosaic.profile.v1 import profile_pb2, profile_service_pb2_grpc
from mosaic.profile.v1 import profile_service_pb2 as pb
from mosaic.testing.plugin import eventually
from profile_service.app import build
from profile_service.backfill import Backfiller
from profile_service.cache import ProfileCache
from profile_service.config import Settings
from profile_service.profiles import Profiles
from profile_service.store import open_store

PARTITIONS = 4
NAME = "eur_revenue"
EUR = profile_pb2.PropertyFilter(property="currency", equals={"string_value": "EUR"})
SERIES = pb.DefineEventSeriesRequest(name=NAME, event="Order Completed", property="revenue", filters=[EUR])
DEFINITION = profile_pb2.ComputedTraitDefinition(
    name=NAME, aggregation=profile_pb2.AGGREGATION_DAILY, event="Order Completed", property="revenue", filters=[EUR]
)
EVERY = frozenset(range(PARTITIONS))


def partition(profile_id: str) -> int:
    return topics.partition_of(profile_id, PARTITIONS)


def people(per_partition: int, partitions=EVERY, prefix: str = "person") -> list[str]:
    """Profile ids, `per_partition` on each of `partitions`, in the order a scan reads them."""
    found: dict[int, list[str]] = {p: [] for p in partitions}
    for i in itertools.count():
        ids = found.get(partition(f"{prefix}-{i:03d}"))
        if ids is not None and len(ids) < per_partition:
            ids.append(f"{prefix}-{i:03d}")
        if all(len(ids) == per_partition for ids in found.values()):
            return sorted(pid for ids in found.values() for pid in ids)
    raise AssertionError("unreachable")


def order(profile_id: str, n: int = 0, currency: str = "EUR") -> resolved_pb2.ResolvedEvent:
    event = event_pb2.Event(
        type=event_pb2.EVENT_TYPE_TRACK, event="Order Completed", user_id=profile_id, message_id=f"{profile_id}-o{n}"
    )
    event.timestamp.GetCurrentTime()
    event.properties.update({"revenue": 10 + n, "currency": currency})
    return resolved_pb2.ResolvedEvent(profile_id=profile_id, event=event)


async def backfill_messages(bus: Bus) -> tuple[dict[int, int], Counter]:
    """Read from the profile.updated stream: the sequence of the last message of the series'
    backfill on each partition, and how many of them each profile got."""
    js, stream = bus.jetstream, topics.PROFILE_UPDATED.stream
    state = (await js.stream_info(stream)).state
    last: dict[int, int] = {}
    per_profile: Counter = Counter()
    for sequence in range(state.first_seq, state.last_seq + 1):
        update = profile_updated_pb2.ProfileUpdated.FromString((await js.get_msg(stream, sequence)).data or b"")
        if update.cause_message_id == f"backfill:{NAME}":
            last[partition(update.profile_id)] = sequence
            per_profile[update.profile_id] += 1
    return last, per_profile


# Through the service


def service_settings(make_settings) -> Settings:
    platform = make_settings("profile", MOSAIC_PARTITIONS=str(PARTITIONS), MOSAIC_GRACE_SECONDS="1")
    return Settings(platform, (), 90, 90, 20, 1000)


@contextlib.asynccontextmanager
async def serving(settings: Settings):
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    assert service.runtime is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            yield service.runtime.bus, profile_service_pb2_grpc.ProfileServiceStub(channel)
    finally:
        await service.stop()


async def send_and_apply(bus: Bus, stub, orders: list[resolved_pb2.ResolvedEvent]) -> None:
    for resolved in orders:
        await bus.publish(topics.EVENTS_RESOLVED, resolved.profile_id, resolved, resolved.event.message_id)
    wanted = Counter(resolved.profile_id for resolved in orders)

    async def applied() -> bool:
        for profile_id, version in wanted.items():
            try:
                found = await stub.GetProfile(pb.GetProfileRequest(profile_id=profile_id))
            except grpc.aio.AioRpcError:
                return False
            if found.profile.version < version:
                return False
        return True

    await eventually(applied)


async def backfilled(stub) -> pb.DefineEventSeriesResponse | None:
    answer = await stub.DefineEventSeries(SERIES)
    return answer if len(answer.backfilled) == answer.partition_count else None


async def test_define_event_series_reports_each_partition_backfilled_through_its_last_backfill_message(
    make_settings,
):
    settings = service_settings(make_settings)
    matching = people(2, partitions=(0, 1))
    others = people(2, partitions=(2,), prefix="other")  # their orders are in USD: the backfill changes none
    async with serving(settings) as (bus, stub):
        await send_and_apply(
            bus, stub, [order(pid, n) for pid in matching for n in range(2)] + [order(pid, 0, "USD") for pid in others]
        )
        first = await stub.DefineEventSeries(SERIES)
        assert first.created and first.partition_count == PARTITIONS
        answer = await eventually(lambda: backfilled(stub))
        last, per_profile = await backfill_messages(bus)
        assert dict(answer.backfilled) == {0: last[0], 1: last[1], 2: 0, 3: 0}, "partition 3 holds no profile"
        assert per_profile == {pid: 1 for pid in matching}
        assert not answer.created


async def test_a_restarted_service_backfills_the_partitions_without_a_record_and_only_those(make_settings):
    settings = service_settings(make_settings)
    everyone = people(2)
    async with serving(settings) as (bus, stub):
        await send_and_apply(bus, stub, [order(pid) for pid in everyone])
    # While no replica runs: the series is stored, and partition 0 alone recorded done, as a replica
    # stopped in the middle of its backfill leaves it (or, with no record at all, an upgrade).
    store = await open_store(settings.platform)
    await store.create_definition(DEFINITION)
    await store.set_backfilled(DEFINITION, 0, 0)
    await store.close()
    async with serving(settings) as (bus, stub):
        answer = await eventually(lambda: backfilled(stub))
        last, per_profile = await backfill_messages(bus)
        assert dict(answer.backfilled) == {0: 0, 1: last[1], 2: last[2], 3: last[3]}
        assert per_profile == {pid: 1 for pid in everyone if partition(pid) != 0}


# Through replicas built of the service's parts


@contextlib.asynccontextmanager
async def replica(make_settings, member: str):
    """A profile replica without consumers (the test applies the events): its store, bus, cache,
    Profiles and Backfiller, following a real Ownership, wired as app.py wires them."""
    platform = make_settings("profile", MOSAIC_PARTITIONS=str(PARTITIONS))
    store = await open_store(platform)
    bus = await Bus.connect(platform.nats_url, "profile", PARTITIONS)
    await bus.ensure_streams()
    cache = ProfileCache(100, PARTITIONS)
    ownership = Ownership(bus, "profile", PARTITIONS, platform.nats_url, lease_seconds=2, member=member)
    ownership.follow(acquired=cache.own, released=cache.disown)
    profiles = Profiles(store, cache, bus, Settings(platform, (), 90, 90, 5, 100))
    backfiller = Backfiller(profiles, ownership)
    ownership.follow(acquired=backfiller.acquired, released=backfiller.released)
    await ownership.start()
    try:
        yield profiles, backfiller, ownership
    finally:
        await ownership.stop()
        await bus.close()
        await store.close()


async def test_partitions_taken_over_are_folded_with_the_definitions_stored_before_they_came(make_settings):
    async with replica(make_settings, "replica-b") as (b, backfill_b, _):
        assert NAME not in {d.name for d in await b.definitions.all()}  # kept for its max age (5 s)
        # Another replica defines the series, backfills a partition and records it, then hands
        # the partition over: its events from now on are folded here, with the series.
        await b.store.create_definition(DEFINITION)
        await backfill_b.acquired(frozenset({1}))
        assert NAME in {d.name for d in await b.definitions.all()}


SHARES = assign(PARTITIONS, ["replica-a", "replica-b"])
KEPT, MOVED = SHARES["replica-a"], SHARES["replica-b"]  # once replica-b joins


async def has_series(profiles: Profiles, profile_id: str) -> bool:
    latest = await profiles.store.latest(profile_id)
    return latest is not None and any(entry.series == NAME for entry in latest.profile.daily_series.values())


async def test_a_partition_handed_over_mid_backfill_is_backfilled_and_recorded_by_its_new_owner(make_settings):
    everyone = people(4)
    kept = [pid for pid in everyone if partition(pid) in KEPT]
    blocker = kept[len(kept) // 2]  # replica-a's pass waits at this profile, in the middle of the scan
    async with replica(make_settings, "replica-a") as (a, backfill_a, ownership_a):
        assert ownership_a.owned == EVERY
        for pid in everyone:
            await a.apply(order(pid))
        await a.store.create_definition(DEFINITION)
        a.definitions.invalidate()  # as DefineEventSeries does
        held = a.lock(blocker)
        await held.acquire()
        passing = asyncio.create_task(backfill_a.once())
        await eventually(lambda: has_series(a, everyone[everyone.index(blocker) - 1]))
        async with replica(make_settings, "replica-b") as (b, backfill_b, ownership_b):
            await eventually(lambda: ownership_a.owned == KEPT and ownership_b.owned == MOVED)
            held.release()
            await passing
            assert set(await a.store.backfills(DEFINITION)) == KEPT, "what it handed over, replica-a does not record"
            await backfill_b.once()
            last, per_profile = await backfill_messages(a.bus)
            assert await a.store.backfills(DEFINITION) == {p: last[p] for p in EVERY}
            # Each profile's backfill published once: what replica-a had done, replica-b published
            # again, dropped as duplicates (and answered with the originals' sequences).
            assert per_profile == {pid: 1 for pid in everyone}
            assert all([await has_series(b, pid) for pid in everyone])


async def test_a_partition_released_and_taken_back_during_a_pass_is_recorded_by_the_next_pass(make_settings):
    blocker = next(f"zz-{i}" for i in itertools.count() if partition(f"zz-{i}") in KEPT)
    everyone = [*people(3), blocker]  # the blocker last: every other profile is done before it
    async with replica(make_settings, "replica-a") as (a, backfill_a, ownership_a):
        for pid in everyone:
            await a.apply(order(pid))
        await a.store.create_definition(DEFINITION)
        a.definitions.invalidate()  # as DefineEventSeries does
        held = a.lock(blocker)
        await held.acquire()
        passing = asyncio.create_task(backfill_a.once())
        await eventually(lambda: has_series(a, everyone[-2]))
        async with replica(make_settings, "replica-b") as (_, _, ownership_b):  # backfills nothing
            await eventually(lambda: ownership_a.owned == KEPT and ownership_b.owned == MOVED)
        await eventually(lambda: ownership_a.owned == EVERY)
        held.release()
        await passing
        assert set(await a.store.backfills(DEFINITION)) == KEPT, (
            "what went away and came back, that pass does not record"
        )
        published = (await a.bus.jetstream.stream_info(topics.PROFILE_UPDATED.stream)).state.messages
        await backfill_a.once()
        last, per_profile = await backfill_messages(a.bus)
        assert await a.store.backfills(DEFINITION) == {p: last[p] for p in EVERY}
        assert per_profile == {pid: 1 for pid in everyone}
        assert (await a.bus.jetstream.stream_info(topics.PROFILE_UPDATED.stream)).state.messages == published, (
            "the second pass changed nothing: what it published again were duplicates"
        )
