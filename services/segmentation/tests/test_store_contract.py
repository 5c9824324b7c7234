"""The segmentation store's contract, on SQLite and on Cassandra."""

import uuid

import pytest

from mosaic.platform.errors import AlreadyExists, NotFound
from mosaic.segmentation.v1 import segment_pb2
from segmentation_service.store import Transition, open_store


@pytest.fixture
async def store(store_settings):
    store = await open_store(store_settings)
    yield store
    await store.close()


async def test_a_segment_id_can_be_taken_once(store):
    segment = segment_pb2.Segment(segment_id=f"s-{uuid.uuid4().hex[:8]}", name="first")
    await store.create(segment)
    with pytest.raises(AlreadyExists):
        await store.create(segment_pb2.Segment(segment_id=segment.segment_id, name="second"))
    [stored] = [s for s in await store.segments() if s.segment_id == segment.segment_id]
    assert stored.name == "first"


async def test_membership_is_kept_with_the_version_it_was_decided_at(store):
    pid = str(uuid.uuid4())
    assert await store.membership("vip", pid) == (False, 0)
    await store.set_membership("vip", pid, True, 3)
    assert await store.membership("vip", pid) == (True, 3)
    await store.set_membership("vip", pid, False, 4)
    assert await store.membership("vip", pid) == (False, 4)


async def test_a_segment_is_read_by_id_replaced_paged_and_deleted(store):
    prefix = f"c{uuid.uuid4().hex[:6]}"
    for index in range(3):
        await store.create(segment_pb2.Segment(segment_id=f"{prefix}-{index}", name=str(index)))
    assert (await store.get(f"{prefix}-1")).name == "1"
    assert await store.get(f"{prefix}-9") is None
    await store.replace(segment_pb2.Segment(segment_id=f"{prefix}-1", name="one", revision=2))
    assert (await store.get(f"{prefix}-1")).revision == 2
    with pytest.raises(NotFound):
        await store.replace(segment_pb2.Segment(segment_id=f"{prefix}-9", name="nine"))
    page = await store.page(f"{prefix}-0", 2)
    assert [s.segment_id for s in page][:2] == [f"{prefix}-1", f"{prefix}-2"]
    await store.delete(f"{prefix}-2")
    assert await store.get(f"{prefix}-2") is None


async def test_a_transition_is_kept_with_its_membership_and_pending_until_published(store):
    pid = str(uuid.uuid4())
    entered = Transition("vip", pid, 3, True, 5, "v:1:5")
    await store.record([entered])
    assert await store.membership("vip", pid) == (True, 5)
    assert await store.profile_memberships(pid) == {"vip": (True, 5)}
    assert (pid, 5) in await store.members("vip", 3)
    assert await store.pending(3, pid) == [entered]
    assert entered in await store.pending(3)
    await store.published([entered])
    assert await store.pending(3, pid) == []
    exited = Transition("vip", pid, 3, False, 6, "v:1:6")
    await store.record([exited])
    assert (pid, 5) not in await store.members("vip", 3) and await store.membership("vip", pid) == (False, 6)
    assert [(t.cause, t.entered) for t in await store.transitions(pid)] == [("v:1:5", True), ("v:1:6", False)]


async def test_a_batch_of_transitions_and_timers_is_recorded_and_read_back_at_once(store):
    a, b, partition = str(uuid.uuid4()), str(uuid.uuid4()), 1000 + uuid.uuid4().int % 1000
    entered = Transition("vip", a, partition, True, 1, "v:1:1")
    left = Transition("vip", a, partition, False, 2, "v:1:2")  # the same batch entered and left
    other = Transition("pro", b, partition + 1, True, 7, "v:3:7")
    await store.record([entered, left, other], [(partition, 50, a), (partition + 1, 51, b)])
    decided, pending = await store.decisions({a: partition, b: partition + 1, "nobody": partition})
    assert decided == {a: {"vip": (False, 2)}, b: {"pro": (True, 7)}}
    assert sorted(pending, key=lambda t: t.message_id) == sorted([entered, left, other], key=lambda t: t.message_id)
    assert a not in dict(await store.members("vip", partition))
    assert dict(await store.members("pro", partition + 1)) == {b: 7}
    assert await store.timers(partition, 50) == [a] and await store.timers(partition + 1, 51) == [b]
    await store.published([entered, other])
    assert (await store.decisions({a: partition, b: partition + 1}))[1] == [left]
    await store.published([left])
    assert await store.pending(partition) == [] and await store.pending(partition + 1) == []


async def test_many_transitions_of_one_batch_end_as_each_profile_decided_last(store):
    # More than one request's worth, each profile entering two segments and leaving one of them:
    # the leave must not share a request (and a write time) with the enter it follows.
    partition = 2000 + uuid.uuid4().int % 1000
    people = [str(uuid.uuid4()) for _ in range(20)]
    transitions = [
        t
        for pid in people
        for t in (
            Transition("vip", pid, partition, True, 1, "v:1:1"),
            Transition("pro", pid, partition, True, 2, "v:2:2"),
            Transition("vip", pid, partition, False, 3, "v:1:3"),
        )
    ]
    await store.record(transitions)
    decided, pending = await store.decisions(dict.fromkeys(people, partition))
    assert decided == {pid: {"vip": (False, 3), "pro": (True, 2)} for pid in people}
    assert len(pending) == len(transitions)
    assert not set(people) & set(dict(await store.members("vip", partition)))
    assert dict(await store.members("pro", partition)) == dict.fromkeys(people, 2)


async def test_merged_profiles_and_backfill_progress_are_kept(store):
    pid, sid = str(uuid.uuid4()), f"b{uuid.uuid4().hex[:8]}"
    await store.set_merged(7, pid, "survivor")
    assert (await store.merged(7))[pid] == "survivor"
    await store.set_merged(7, pid, "")
    assert pid not in await store.merged(7)
    await store.set_backfilled(sid, 2, 0)
    await store.set_backfilled(sid, 2, 5)
    await store.set_backfilled(sid, 2, 5)
    assert await store.backfilled(sid, 2) == {0, 5} and await store.backfilled(sid, 1) == set()


async def test_timers_are_kept_by_partition_and_bucket_with_a_cursor(store):
    pid, partition = str(uuid.uuid4()), 1000 + uuid.uuid4().int % 1000
    assert await store.timer_cursor(partition) is None
    await store.add_timer(partition, 42, pid)
    await store.add_timer(partition, 42, pid)
    await store.add_timer(partition, 43, "other")
    assert await store.timers(partition, 42) == [pid]
    await store.drop_timer(partition, 42, pid)
    assert await store.timers(partition, 42) == [] and await store.timers(partition, 43) == ["other"]
    await store.set_timer_cursor(partition, 42)
    await store.set_timer_cursor(partition, 43)
    assert await store.timer_cursor(partition) == 43


async def test_sizes_are_kept_per_day_and_partition_and_summed(store):
    sid = f"z{uuid.uuid4().hex[:8]}"
    await store.set_size(sid, "2026-03-30", 0, 5)
    await store.set_size(sid, "2026-03-31", 0, 6)
    await store.set_size(sid, "2026-03-31", 1, 4)
    await store.set_size(sid, "2026-03-31", 1, 3)  # counted again later that day
    assert await store.sizes(sid, "2026-03-30") == {"2026-03-30": 5, "2026-03-31": 9}
    assert await store.sizes(sid, "2026-03-31") == {"2026-03-31": 9}


async def test_the_rfm_model_is_one_row_replaced_by_each_recompute(store):
    assert await store.rfm_model() is None
    await store.init_rfm_model(segment_pb2.RfmModel())
    assert await store.rfm_model() == segment_pb2.RfmModel()
    model = segment_pb2.RfmModel(generation=3, customers=7, recency_edges=[1, 2, 3, 4])
    model.computed_at.FromSeconds(1_800_000_000)
    await store.set_rfm_model(model)
    await store.init_rfm_model(segment_pb2.RfmModel())  # a replica starting late changes nothing
    assert await store.rfm_model() == model
    model.generation, model.recency_edges[0] = 4, 0.5
    await store.set_rfm_model(model)
    assert await store.rfm_model() == model


async def test_erased_profiles_are_kept_by_partition_until_no_update_of_theirs_can_come(store):
    await store.add_erased(3, ["k-old"], 1_000.0)
    await store.add_erased(3, ["k-a", "k-b"], 2_000.0)
    await store.add_erased(4, ["k-c"], 2_000.0)
    assert sorted(await store.erased(3, 1_500.0)) == ["k-a", "k-b"]
    assert await store.erased(4, 1_500.0) == ["k-c"]
    assert await store.erased(5, 0.0) == []
