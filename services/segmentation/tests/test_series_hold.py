"""A segment on an event series waits for the profile service's backfill of the series: on the
embedded store and a real nats-server; the profile service's answers to DefineEventSeries are
a stand-in (their making is the profile service's own tests', and the walk's end to end)."""

from datetime import datetime, timezone

import pytest

from mosaic.events.v1 import profile_updated_pb2, segment_membership_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.errors import FailedPrecondition, Unavailable
from mosaic.platform.ownership import FixedPartitions
from mosaic.profile.v1 import profile_service_pb2
from mosaic.segmentation.v1 import segment_pb2
from mosaic.segmentation.v1 import segmentation_service_pb2 as pb
from segmentation_service import compiler, series
from segmentation_service.backfill import Backfiller
from segmentation_service.catalog import SegmentCatalog
from segmentation_service.columns import ColumnarView
from segmentation_service.membership import Memberships
from segmentation_service.profiles import SeriesGate
from segmentation_service.server import SegmentationServicer
from segmentation_service.state import ProfileState
from segmentation_service.store import open_store

ENTERED = segment_membership_pb2.MEMBERSHIP_CHANGE_ENTERED
EXITED = segment_membership_pb2.MEMBERSHIP_CHANGE_EXITED
LIGHT = 'sum(event "Order Completed".revenue in last 30d) < 100'  # true of a profile without orders
HEAVY = 'sum(event "Order Completed".revenue in last 30d) >= 100'  # the same series, the other way
TODAY = datetime.now(timezone.utc).date().isoformat()


def series_name() -> str:
    _, expression = compiler.definition_of(text=LIGHT)
    (request,) = series.needed(expression)
    return request.name


class ProfileService:
    """The answers of DefineEventSeries: how far the series' backfill is (or `down`)."""

    def __init__(self, partitions: int) -> None:
        self.answer = profile_service_pb2.DefineEventSeriesResponse(partition_count=partitions)
        self.asked = 0
        self.down = False

    async def series(self, request):
        self.asked += 1
        if self.down:
            raise Unavailable("profile service", "connection refused")
        return self.answer


class Replica:
    def __init__(self, settings, store, bus, profiles: ProfileService) -> None:
        self.settings, self.store, self.bus, self.profiles = settings, store, bus, profiles
        self.restart()

    def restart(self) -> None:
        self.catalog = SegmentCatalog(self.store, max_age=0)
        self.view = ColumnarView(self.settings.partitions)
        self.memberships = Memberships(self.store, self.catalog, self.view, self.bus)
        self.gate = SeriesGate(self.profiles, self.memberships.handled)
        self.owned = FixedPartitions(range(self.settings.partitions))
        self.backfiller = Backfiller(self.store, self.catalog, self.memberships, self.owned, gate=self.gate)

    async def moves(self) -> list[tuple[str, segment_membership_pb2.MembershipChange]]:
        info = await self.bus._js.stream_info(topics.SEGMENT_MEMBERSHIP.stream)
        found = []
        for seq in range(1, info.state.messages + 1):
            raw = await self.bus._js.get_msg(topics.SEGMENT_MEMBERSHIP.stream, seq)
            change = segment_membership_pb2.SegmentMembershipChanged.FromString(raw.data)
            found.append((change.profile_id, change.change))
        return found

    async def orders(self, profile_id: str, version: int, revenue: float, sequence: int) -> None:
        """The profile.updated of a series day (a backfill's, or a new order's), in a batch."""
        update = profile_updated_pb2.ProfileUpdated(profile_id=profile_id, version=version)
        change = update.changes.add(path=f"daily_series.{TODAY}|{series_name()}")
        change.new_value.struct_value.update({"count": 1, "sum": revenue, "min": revenue, "max": revenue})
        partition = self.memberships.partition(profile_id)
        delivery = Delivery(f"profile.updated.{partition}", partition, sequence, 1, "")
        await self.memberships.updated_batch([(update, delivery)])


@pytest.fixture
async def replica(make_settings):
    settings = make_settings("segmentation")
    store = await open_store(settings)
    bus = await Bus.connect(settings.nats_url, "segmentation", settings.partitions)
    await bus.ensure_streams()
    yield Replica(settings, store, bus, ProfileService(settings.partitions))
    await bus.close()
    await store.close()


def backfilled(profiles: ProfileService, sequences: dict[int, int]) -> None:
    profiles.answer.backfilled.clear()
    profiles.answer.backfilled.update(sequences)


async def test_a_segment_on_a_series_waits_for_its_backfill_so_no_profile_enters_before_its_past(replica):
    partitions = replica.settings.partitions
    # Two customers in the view, neither with the series yet: the profile service has not
    # backfilled it, though "spent" ordered for 500 before the segment existed.
    for profile_id in ("spent", "never"):
        replica.view.put(ProfileState(profile_id, 1, {"plan": "pro"}), 0.0)
    await replica.store.create(segment_pb2.Segment(segment_id="light", name="light", definition=LIGHT, revision=1))
    spent = replica.memberships.partition("spent")
    # Half the partitions backfilled: the segment waits; an order now decides nothing for it.
    backfilled(replica.profiles, {p: 0 for p in range(partitions // 2)})
    assert await replica.backfiller.once() == 0
    assert await replica.store.backfilled("light", 1) == set()
    await replica.orders("never", 2, 20.0, sequence=3)
    assert await replica.moves() == []
    # Every partition backfilled, "spent"'s past published at sequence 9 and not handled yet.
    backfilled(replica.profiles, {p: (9 if p == spent else 0) for p in range(partitions)})
    assert await replica.backfiller.once() == 0
    assert await replica.moves() == []
    await replica.orders("spent", 2, 500.0, sequence=9)  # the backfill's profile.updated
    assert replica.memberships.handled[spent] == 9
    assert await replica.moves() == []  # still held: decided by its backfill
    # Now the backfill runs: "never" (20 spent) enters, "spent" (500) never does.
    assert await replica.backfiller.once() == 1
    assert await replica.moves() == [("never", ENTERED)]
    assert await replica.store.backfilled("light", 1) == set(range(partitions))
    # Backfilled: live again, and ready stays ready without asking the profile service again.
    asked = replica.profiles.asked
    await replica.orders("never", 3, 200.0, sequence=12)
    assert await replica.moves() == [("never", ENTERED), ("never", EXITED)]
    assert await replica.backfiller.once() == 0 and replica.profiles.asked == asked


async def test_after_a_restart_a_backfilled_segment_on_a_series_is_decided_at_once(replica):
    partitions = frozenset(range(replica.settings.partitions))
    await replica.store.create(segment_pb2.Segment(segment_id="light", name="light", definition=LIGHT, revision=1))
    for partition in partitions:
        await replica.store.set_backfilled("light", 1, partition)
    replica.restart()  # the profile service answers nothing done: it is never asked
    await replica.backfiller.load(partitions)  # as acquiring the partitions does, before consuming
    await replica.orders("never", 1, 20.0, sequence=4)
    assert await replica.moves() == [("never", ENTERED)]
    assert replica.profiles.asked == 0


async def test_only_a_whole_batch_moves_what_is_handled(replica):
    update = profile_updated_pb2.ProfileUpdated(profile_id="p-1", version=1)
    partition = replica.memberships.partition("p-1")
    delivery = Delivery(f"profile.updated.{partition}", partition, 7, 1, "")
    await replica.memberships.updated(update, delivery)  # the fallback: other keys may be behind
    assert replica.memberships.handled == {}
    await replica.memberships.updated_batch([(update, delivery)])
    assert replica.memberships.handled == {partition: 7}


async def test_the_gate_says_why_a_series_is_not_ready():
    handled: dict[int, int] = {0: 5}
    profiles = ProfileService(4)
    gate = SeriesGate(profiles, handled)
    _, expression = compiler.definition_of(text=LIGHT)
    needed = series.needed(expression)
    backfilled(profiles, {0: 0, 1: 0})
    assert list((await gate.waiting(needed, frozenset({0}))).values()) == [
        "the profile service has backfilled 2 of 4 partitions"
    ]
    backfilled(profiles, {0: 6, 1: 0, 2: 0, 3: 0})
    assert list((await gate.waiting(needed, frozenset({0}))).values()) == [
        "profile.updated of partitions [0] is still to be handled here"
    ]
    handled[0] = 6
    assert await gate.waiting(needed, frozenset({0})) == {}
    # A profile service from before backfill records (no partition count) is not waited for.
    old = SeriesGate(ProfileService(0), {})
    assert await old.waiting(needed, frozenset({0, 1})) == {}


async def test_while_the_profile_service_is_down_a_segment_on_a_series_waits_and_the_others_are_backfilled(replica):
    replica.view.put(ProfileState("pro", 1, {"plan": "pro"}), 0.0)
    await replica.store.create(segment_pb2.Segment(segment_id="light", name="light", definition=LIGHT, revision=1))
    plan = 'traits.plan = "pro"'
    await replica.store.create(segment_pb2.Segment(segment_id="pros", name="pros", definition=plan, revision=1))
    replica.profiles.down = True
    assert await replica.backfiller.once() == 1  # the segment without a series is not held up
    assert await replica.moves() == [("pro", ENTERED)]
    assert await replica.store.backfilled("light", 1) == set()
    # Back, with the series backfilled everywhere: the held segment is backfilled in turn.
    replica.profiles.down = False
    backfilled(replica.profiles, {p: 0 for p in range(replica.settings.partitions)})
    assert await replica.backfiller.once() == 1
    assert await replica.moves() == [("pro", ENTERED), ("pro", ENTERED)]
    assert await replica.store.backfilled("light", 1) == set(range(replica.settings.partitions))


async def test_an_update_that_comes_while_a_held_segment_is_backfilled_is_decided_after_it(replica):
    replica.view.put(ProfileState("b", 1, {"plan": "pro"}), 0.0)
    await replica.store.create(segment_pb2.Segment(segment_id="heavy", name="heavy", definition=HEAVY, revision=1))
    backfilled(replica.profiles, {p: 0 for p in range(replica.settings.partitions)})
    members, ordered = replica.store.members, []

    async def members_then_an_order(segment_id, partition):
        found = await members(segment_id, partition)
        if partition == replica.memberships.partition("b") and not ordered:
            # After the backfill read the view: "b" (no orders, not a member) orders for 500,
            # and the live path passes over the segment, held by its backfill.
            ordered.append(True)
            await replica.orders("b", 2, 500.0, sequence=1)
        return found

    replica.store.members = members_then_an_order
    assert await replica.backfiller.once() == 1
    assert await replica.moves() == [("b", ENTERED)]


async def test_a_replica_asked_by_a_peer_answers_an_estimate_on_a_series_once_its_partitions_are_ready(replica):
    partitions = replica.settings.partitions
    replica.view.put(ProfileState("light", 1, {"plan": "pro"}), 0.0)
    servicer = SegmentationServicer(
        replica.store,
        replica.catalog,
        replica.memberships,
        replica.backfiller,
        reader=replica.profiles,
        gate=replica.gate,
    )
    asked_by_a_peer = pb.EstimateRequest(definition=LIGHT, local_only=True)
    backfilled(replica.profiles, {p: 0 for p in range(partitions // 2)})
    with pytest.raises(FailedPrecondition, match=f"backfilled {partitions // 2} of {partitions} partitions"):
        await servicer.Estimate(asked_by_a_peer, None)  # its share would count profiles without their past
    backfilled(replica.profiles, {p: 0 for p in range(partitions)})
    answer = await servicer.Estimate(asked_by_a_peer, None)
    assert (answer.count, answer.population) == (1, 1)
