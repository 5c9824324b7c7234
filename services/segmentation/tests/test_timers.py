"""Time passing on the embedded store and a real nats-server: profiles enter and leave
segments when their due time comes, with no new event, also across a restart."""

import asyncio
from datetime import datetime, timezone

import pytest
from google.protobuf import struct_pb2

from mosaic.events.v1 import profile_updated_pb2, segment_membership_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.ownership import FixedPartitions
from mosaic.segmentation.v1 import segment_pb2
from segmentation_service import backfill, compiler
from segmentation_service.backfill import Backfiller
from segmentation_service.catalog import SegmentCatalog
from segmentation_service.columns import ColumnarView
from segmentation_service.membership import Memberships
from segmentation_service.state import DAY, ProfileState
from segmentation_service.store import open_store
from segmentation_service.timers import TIMER_BUCKET, Timers, bucket_of

DELIVERY = Delivery("profile.updated.0", 0, 1, 1, "")
START = datetime(2026, 3, 31, 10, tzinfo=timezone.utc).timestamp()
ENTERED = segment_membership_pb2.MEMBERSHIP_CHANGE_ENTERED
EXITED = segment_membership_pb2.MEMBERSHIP_CHANGE_EXITED


class Replica:
    def __init__(self, settings, store, bus, clock) -> None:
        self.settings, self.store, self.bus, self.clock = settings, store, bus, clock
        self.restart()

    def restart(self) -> None:
        catalog = SegmentCatalog(self.store, max_age=0)
        self.timers = Timers(self.store, catalog, FixedPartitions(range(self.settings.partitions)))
        self.memberships = Memberships(
            self.store,
            catalog,
            ColumnarView(self.settings.partitions),
            self.bus,
            clock=lambda: self.clock[0],
            timers=self.timers,
        )

    async def moves(self):
        info = await self.bus._js.stream_info(topics.SEGMENT_MEMBERSHIP.stream)
        found = []
        for seq in range(1, info.state.messages + 1):
            m = segment_membership_pb2.SegmentMembershipChanged.FromString(
                (await self.bus._js.get_msg(topics.SEGMENT_MEMBERSHIP.stream, seq)).data
            )
            found.append((m.segment_id, m.profile_id, m.change))
        return found


@pytest.fixture
async def replica(make_settings):
    settings = make_settings("segmentation")
    store = await open_store(settings)
    bus = await Bus.connect(settings.nats_url, "segmentation", settings.partitions)
    await bus.ensure_streams()
    for segment_id, text in (
        ("trial-over", "traits.trial_started < now - 14d"),
        ("recent-buyers", 'count(event "Order Completed" in last 30d) > 0'),
    ):
        definition, expression = compiler.definition_of(text=text)
        await store.create(
            segment_pb2.Segment(
                segment_id=segment_id, name=segment_id, definition=definition, expression=expression, revision=1
            )
        )
    yield Replica(settings, store, bus, [START])
    await bus.close()
    await store.close()


def update(version: int, path: str, value) -> profile_updated_pb2.ProfileUpdated:
    message = profile_updated_pb2.ProfileUpdated(profile_id="p-1", version=version)
    message.changes.add(
        path=path, new_value=struct_pb2.Value(**{"number_value" if isinstance(value, int) else "string_value": value})
    )
    return message


async def test_a_profile_enters_when_its_due_time_comes_also_after_a_restart(replica):
    await replica.memberships.updated(update(1, "traits.trial_started", "2026-03-20T10:00:00Z"), DELIVERY)
    assert await replica.timers.fire() == 0 and await replica.moves() == []
    due = datetime(2026, 4, 3, 10, tzinfo=timezone.utc).timestamp()
    replica.clock[0] = due - 1  # not yet
    assert await replica.timers.fire() == 0
    replica.restart()  # the view is empty again; the timer and the cursor are in the store
    await replica.memberships.updated(update(1, "traits.trial_started", "2026-03-20T10:00:00Z"), DELIVERY)
    replica.clock[0] = due + TIMER_BUCKET
    assert await replica.timers.fire() == 1
    assert await replica.timers.fire() == 0
    assert await replica.moves() == [("trial-over", "p-1", ENTERED)]


async def test_a_profile_leaves_when_its_last_order_ages_out_of_the_window(replica):
    day = datetime.fromtimestamp(START - 29 * DAY, timezone.utc).strftime("%Y-%m-%d")
    await replica.memberships.updated(update(1, f"daily_counters.{day}|Order Completed", 1), DELIVERY)
    assert await replica.moves() == [("recent-buyers", "p-1", ENTERED)]
    midnight = (START // DAY + 1) * DAY
    replica.clock[0] = midnight - 60
    assert await replica.timers.fire() == 0
    replica.clock[0] = midnight + 1
    assert await replica.timers.fire() == 1
    assert await replica.moves() == [("recent-buyers", "p-1", ENTERED), ("recent-buyers", "p-1", EXITED)]


async def test_a_new_timed_segment_gives_every_profile_its_timer_once_backfilled(replica):
    started = {"p-a": START - 3 * DAY, "p-b": START - 5 * DAY, "p-old": START - 30 * DAY}
    for pid, moment in started.items():  # in the view (as rebuilt from ScanProfiles), no timer yet
        when = datetime.fromtimestamp(moment, timezone.utc).isoformat()
        replica.memberships.view.put(ProfileState(pid, 1, {"trial_started": when}), START)
    definition, expression = compiler.definition_of(text="traits.trial_started < now - 7d")
    await replica.store.create(
        segment_pb2.Segment(segment_id="trial-week", name="w", definition=definition, expression=expression, revision=1)
    )
    partitions = FixedPartitions(range(replica.settings.partitions))
    backfiller = Backfiller(replica.store, replica.memberships.catalog, replica.memberships, partitions)
    assert await backfiller.once() == 2  # p-old into trial-week and trial-over
    for pid in ("p-a", "p-b"):
        due = started[pid] + 7 * DAY
        assert pid in await replica.store.timers(replica.memberships.partition(pid), bucket_of(due))
    for pid in ("p-b", "p-a"):  # each when its time comes
        replica.clock[0] = started[pid] + 7 * DAY + TIMER_BUCKET
        assert await replica.timers.fire() == 1
        assert (await replica.moves())[-1] == ("trial-week", pid, ENTERED)


async def test_renewing_every_timer_lets_the_loop_run_while_the_due_times_are_worked_out(replica, monkeypatch):
    # A million-profile view's partition is seconds of due times: held at once, it starved the
    # lease renewals. Another task must run between chunks, with some worked out and some not.
    monkeypatch.setattr(backfill, "SCHEDULED_PER_WRITE", 100)
    when = datetime.fromtimestamp(START - 3 * DAY, timezone.utc).isoformat()
    view = replica.memberships.view
    for i in range(2000):
        view.put(ProfileState(f"p-{i}", 1, {"trial_started": when}), START)
    mine = [pid for pid in view.rows if replica.memberships.partition(pid) == 0]
    worked_out = []
    bucket = replica.timers.bucket
    monkeypatch.setattr(replica.timers, "bucket", lambda *a: worked_out.append(1) or bucket(*a))
    seen: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.append(len(worked_out))
            await asyncio.sleep(0)

    watching = asyncio.create_task(watch())
    backfiller = Backfiller(replica.store, replica.memberships.catalog, replica.memberships, FixedPartitions([0]))
    await backfiller._schedule(0)
    done.set()
    await watching
    assert len(worked_out) == len(mine) > 200
    assert any(0 < count < len(mine) for count in seen), "the loop ran only before and after"
    due = bucket_of(START - 3 * DAY + 14 * DAY)  # trial-over: trial_started < now - 14d
    assert set(mine) <= set(await replica.store.timers(0, due))
