"""Memberships on the embedded store and a real nats-server: profile.updated one at a time and
by fetched batch, redeliveries, restarts, poison messages, merges, splits and backfills."""

from typing import Any

import pytest
from google.protobuf import struct_pb2

from mosaic.events.v1 import identity_changed_pb2, profile_updated_pb2, segment_membership_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.errors import InvalidArgument
from mosaic.platform.ownership import FixedPartitions
from mosaic.segmentation.v1 import segment_pb2
from mosaic.testing.plugin import eventually
from segmentation_service import compiler
from segmentation_service.backfill import Backfiller
from segmentation_service.catalog import SegmentCatalog
from segmentation_service.columns import ColumnarView
from segmentation_service.membership import Memberships
from segmentation_service.state import ProfileState
from segmentation_service.store import Transition, open_store

DELIVERY = Delivery("profile.updated.0", 0, 1, 1, "")
ENTERED = segment_membership_pb2.MEMBERSHIP_CHANGE_ENTERED
EXITED = segment_membership_pb2.MEMBERSHIP_CHANGE_EXITED


def segment(segment_id: str, text: str, revision: int = 1) -> segment_pb2.Segment:
    definition, expression = compiler.definition_of(text=text)
    return segment_pb2.Segment(
        segment_id=segment_id, name=segment_id, definition=definition, expression=expression, revision=revision
    )


class World:
    """One segmentation replica's parts; `restart` builds them again on the same store and bus."""

    def __init__(self, settings, store, bus) -> None:
        self.settings, self.store, self.bus = settings, store, bus
        self.restart()

    def restart(self) -> None:
        self.catalog = SegmentCatalog(self.store, max_age=0)
        self.view = ColumnarView(self.settings.partitions)
        self.memberships = Memberships(self.store, self.catalog, self.view, self.bus)
        self.backfiller = Backfiller(
            self.store, self.catalog, self.memberships, FixedPartitions(range(self.settings.partitions))
        )

    async def published(self) -> list[segment_membership_pb2.SegmentMembershipChanged]:
        info = await self.bus._js.stream_info(topics.SEGMENT_MEMBERSHIP.stream)
        found = []
        for seq in range(1, info.state.messages + 1):
            raw = await self.bus._js.get_msg(topics.SEGMENT_MEMBERSHIP.stream, seq)
            found.append(segment_membership_pb2.SegmentMembershipChanged.FromString(raw.data))
        return found

    async def moves(self) -> list[tuple[str, str, int, int]]:
        return [(m.segment_id, m.profile_id, m.change, m.profile_version) for m in await self.published()]


@pytest.fixture
async def world(make_settings):
    settings = make_settings("segmentation")
    store = await open_store(settings)
    bus = await Bus.connect(settings.nats_url, "segmentation", settings.partitions)
    await bus.ensure_streams()
    await store.create(segment("repeat-buyers", "computed.orders > 1"))
    yield World(settings, store, bus)
    await bus.close()
    await store.close()


def update(version: int, *changes: tuple[str, Any], profile_id: str = "p-1") -> profile_updated_pb2.ProfileUpdated:
    message = profile_updated_pb2.ProfileUpdated(profile_id=profile_id, version=version)
    for path, value in changes:
        change = message.changes.add(path=path)
        if value is not None:
            change.new_value.CopyFrom(
                struct_pb2.Value(**{"number_value" if isinstance(value, (int, float)) else "string_value": value})
            )
    return message


async def test_a_computed_trait_change_moves_a_profile_into_a_segment_once(world):
    await world.memberships.updated(update(1, ("computed_traits.orders", 1)), DELIVERY)
    assert await world.published() == []
    await world.memberships.updated(update(2, ("computed_traits.orders", 2)), DELIVERY)
    await world.memberships.updated(update(2, ("computed_traits.orders", 2)), DELIVERY)  # redelivered
    assert await world.moves() == [("repeat-buyers", "p-1", ENTERED, 2)]
    assert await world.store.membership("repeat-buyers", "p-1") == (True, 2)
    assert await world.store.members("repeat-buyers", world.memberships.partition("p-1")) == [("p-1", 2)]
    await world.memberships.updated(update(3, ("computed_traits.orders", None)), DELIVERY)
    assert (await world.moves())[-1] == ("repeat-buyers", "p-1", EXITED, 3)


async def test_a_change_to_an_unread_trait_evaluates_nothing(world):
    await world.memberships.updated(update(1, ("traits.city", "Paris")), DELIVERY)
    assert world.memberships.evaluations == 0
    assert await world.store.membership("repeat-buyers", "p-1") == (False, 0)


async def test_after_a_restart_a_redelivery_publishes_no_second_transition(world):
    await world.memberships.updated(update(1, ("computed_traits.orders", 5)), DELIVERY)
    world.restart()  # the view is empty again (no profile service here)
    await world.memberships.updated(update(1, ("computed_traits.orders", 5)), DELIVERY)
    assert await world.moves() == [("repeat-buyers", "p-1", ENTERED, 1)]


async def test_a_transition_recorded_but_not_published_before_a_crash_is_published_once(world):
    await world.memberships.updated(update(1, ("traits.city", "Paris")), DELIVERY)
    # The crash: the decision is stored, the publish never happened.
    await world.store.record([Transition("repeat-buyers", "p-1", world.memberships.partition("p-1"), True, 1, "v:1:1")])
    world.restart()
    assert await world.memberships.publish_all_pending(range(world.settings.partitions)) == 1
    await world.memberships.updated(update(1, ("traits.city", "Paris")), DELIVERY)  # redelivered too
    assert await world.moves() == [("repeat-buyers", "p-1", ENTERED, 1)]
    assert await world.store.pending(world.memberships.partition("p-1")) == []


async def test_a_merge_moves_memberships_to_the_survivor_and_a_split_restores_them(world):
    await world.memberships.updated(update(1, ("computed_traits.orders", 3), profile_id="old"), DELIVERY)
    await world.memberships.updated(update(1, ("computed_traits.orders", 1), profile_id="new"), DELIVERY)
    merge = identity_changed_pb2.IdentityMerged(merge_id="m-1", survivor_profile_id="new", merged_profile_ids=["old"])
    await world.memberships.merged(merge, DELIVERY)
    await world.memberships.merged(merge, DELIVERY)  # redelivered
    # The profile service folds old into new and publishes the survivor's change.
    await world.memberships.updated(update(2, ("computed_traits.orders", 4), profile_id="new"), DELIVERY)
    assert await world.moves() == [
        ("repeat-buyers", "old", ENTERED, 1),
        ("repeat-buyers", "old", EXITED, 1),
        ("repeat-buyers", "new", ENTERED, 2),
    ]
    assert not world.view.is_alive("old") and len(world.view) == 1
    split = identity_changed_pb2.IdentitySplit(
        split_id="s-1", merge_id="m-1", survivor_profile_id="new", restored_profile_ids=["old"]
    )
    await world.memberships.split(split, DELIVERY)
    await world.memberships.updated(update(3, ("computed_traits.orders", 1), profile_id="new"), DELIVERY)
    assert (await world.moves())[3:] == [("repeat-buyers", "old", ENTERED, 1), ("repeat-buyers", "new", EXITED, 3)]


async def test_a_new_segment_is_backfilled_over_existing_profiles_and_resumes(world):
    for index in range(6):
        await world.memberships.updated(
            update(1, ("traits.plan", "pro" if index % 2 else "free"), profile_id=f"p{index}"), DELIVERY
        )
    await world.store.create(segment("pro", 'traits.plan = "pro"'))
    # A backfill that finished the first partition only, then the replica stopped.
    first = world.memberships.partition("p1")
    await world.backfiller._partition((await world.catalog.all())["pro"], first)
    await world.store.set_backfilled("pro", 1, first)
    entered_first = len(await world.published())
    assert entered_first == len([i for i in (1, 3, 5) if world.memberships.partition(f"p{i}") == first]) > 0
    world.restart()
    for index in range(6):  # the restarted view is rebuilt (as from ScanProfiles)
        world.view.put(ProfileState(f"p{index}", 1, {"plan": "pro" if index % 2 else "free"}), 0.0)
    assert await world.backfiller.once() == 3 - entered_first
    assert await world.backfiller.once() == 0
    moves = await world.moves()
    assert sorted(m[1] for m in moves if m[0] == "pro") == ["p1", "p3", "p5"]
    assert all(m[2] == ENTERED for m in moves)
    # A changed definition is a new revision, backfilled again: entries and exits.
    await world.store.replace(segment("pro", 'traits.plan = "free"', revision=2))
    await world.backfiller.once()
    moves = [m for m in await world.moves() if m[0] == "pro"][3:]
    assert sorted((m[1], m[2]) for m in moves) == [
        ("p0", ENTERED),
        ("p1", EXITED),
        ("p2", ENTERED),
        ("p3", EXITED),
        ("p4", ENTERED),
        ("p5", EXITED),
    ]


async def test_a_segment_stored_before_the_language_is_evaluated_from_its_condition(world):
    legacy = segment_pb2.Segment(
        segment_id="legacy",
        name="legacy",
        condition=segment_pb2.Condition(
            trait=segment_pb2.TraitCondition(
                trait="plan", operator=segment_pb2.OPERATOR_EQUALS, value=struct_pb2.Value(string_value="pro")
            )
        ),
    )
    await world.store.create(legacy)
    await world.memberships.updated(update(1, ("traits.plan", "pro")), DELIVERY)
    assert await world.moves() == [("legacy", "p-1", ENTERED, 1)]


def delivered(
    *updates: profile_updated_pb2.ProfileUpdated,
) -> list[tuple[profile_updated_pb2.ProfileUpdated, Delivery]]:
    """A fetched batch, in stream order."""
    return [
        (u, Delivery("profile.updated.0", 0, index + 1, 1, f"{u.profile_id}:{u.version}"))
        for index, u in enumerate(updates)
    ]


async def test_a_batch_holding_several_versions_of_a_profile_gives_each_transition_in_order(world):
    await world.memberships.updated_batch(
        delivered(
            update(1, ("computed_traits.orders", 2)),
            update(1, ("computed_traits.orders", 5), profile_id="p-2"),
            update(2, ("computed_traits.orders", None)),
            update(3, ("computed_traits.orders", 4)),
            update(2, ("traits.city", "Paris"), profile_id="p-2"),  # read by no segment
        )
    )
    assert await world.moves() == [
        ("repeat-buyers", "p-1", ENTERED, 1),
        ("repeat-buyers", "p-1", EXITED, 2),
        ("repeat-buyers", "p-1", ENTERED, 3),
        ("repeat-buyers", "p-2", ENTERED, 1),
    ]
    assert [t.cause for t in await world.store.transitions("p-1")] == ["v:1:1", "v:1:2", "v:1:3"]
    assert await world.store.membership("repeat-buyers", "p-1") == (True, 3)
    assert await world.store.pending(world.memberships.partition("p-1")) == []
    assert (world.view.get("p-1").version, world.view.get("p-2").version) == (3, 2)
    assert world.view.get("p-2").traits == {"city": "Paris"}


async def test_a_redelivered_batch_publishes_nothing_twice_also_after_a_restart(world):
    batch = delivered(
        update(1, ("computed_traits.orders", 2)),
        update(2, ("computed_traits.orders", None)),
        update(1, ("computed_traits.orders", 3), profile_id="p-2"),
    )
    await world.memberships.updated_batch(batch)
    first = await world.moves()
    assert len(first) == 3
    await world.memberships.updated_batch(batch)  # redelivered whole
    await world.memberships.updated_batch(batch[1:])  # and in part
    world.restart()  # the view is empty again (no profile service here)
    await world.memberships.updated_batch(batch)
    assert await world.moves() == first
    assert await world.store.membership("repeat-buyers", "p-1") == (False, 2)


async def test_a_batch_publishes_first_and_once_what_an_earlier_attempt_left_pending(world):
    partition = world.memberships.partition("p-1")
    await world.memberships.updated(update(1, ("traits.city", "Paris")), DELIVERY)
    # The crash: a decision stored, its publish never happened; the restarted replica has not
    # published what is pending yet when the profile's next update comes.
    await world.store.record([Transition("repeat-buyers", "p-1", partition, True, 1, "v:1:1")])
    world.restart()
    await world.memberships.updated_batch(
        delivered(update(1, ("traits.city", "Paris")), update(2, ("computed_traits.orders", 0)))
    )
    assert await world.moves() == [("repeat-buyers", "p-1", ENTERED, 1), ("repeat-buyers", "p-1", EXITED, 2)]
    assert await world.store.pending(partition) == []
    await world.memberships.publish_all_pending([partition])
    assert len(await world.moves()) == 2


async def test_an_update_without_a_profile_id_or_a_version_is_invalid_naming_the_field(world):
    with pytest.raises(InvalidArgument) as caught:
        await world.memberships.updated_batch(delivered(update(1, ("computed_traits.orders", 2), profile_id="")))
    assert caught.value.field == "profile_id"
    with pytest.raises(InvalidArgument) as caught:
        await world.memberships.updated(update(0, ("computed_traits.orders", 2)), DELIVERY)
    assert caught.value.field == "version" and "at least 1" in caught.value.rule
    with pytest.raises(InvalidArgument) as caught:
        await world.memberships.updated(update(1, ("jurisdiction", "JURISDICTION_MARS")), DELIVERY)
    assert caught.value.field == "changes.new_value" and "JURISDICTION_MARS" in caught.value.rule
    assert await world.published() == [] and "p-1" not in world.view


async def test_a_poison_update_in_a_fetched_batch_is_dead_lettered_and_the_others_are_decided(world):
    # Three profiles of one partition, published before the consumer starts: one fetched batch.
    partition = world.memberships.partition("a")
    a, poison, c = [pid for pid in (f"p{i}" for i in range(200)) if world.memberships.partition(pid) == partition][:3]
    messages = [
        update(1, ("computed_traits.orders", 2), profile_id=a),
        update(1, ("computed_traits.orders", 9), ("jurisdiction", "JURISDICTION_MARS"), profile_id=poison),
        update(1, ("computed_traits.orders", 3), profile_id=c),
    ]
    await world.bus.publish_many(
        topics.PROFILE_UPDATED, [(u.profile_id, u.SerializeToString(), f"{u.profile_id}:1") for u in messages]
    )
    batches: list[list[str]] = []

    async def batch(items) -> None:
        batches.append([u.profile_id for u, _ in items])
        await world.memberships.updated_batch(items)

    world.bus.consume(topics.PROFILE_UPDATED, world.memberships.updated, [partition], batch_handler=batch)

    async def dead_letters() -> int:
        return (await world.bus._js.stream_info("DEAD_LETTERS")).state.messages

    async def settled() -> bool:
        info = await world.bus._js.consumer_info(topics.PROFILE_UPDATED.stream, f"segmentation-{partition}")
        return info.num_pending + info.num_ack_pending == 0

    await eventually(lambda: len(batches) > 0)
    await eventually(settled)
    assert [a, poison, c] in batches, "the three came in one batch, which failed"
    assert sorted(await world.moves()) == [("repeat-buyers", a, ENTERED, 1), ("repeat-buyers", c, ENTERED, 1)]
    assert await dead_letters() == 1
    assert poison not in world.view and world.view.get(a).version == 1
