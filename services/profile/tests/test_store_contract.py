"""The profile store's contract, on SQLite and on Cassandra."""

import time
import uuid

import pytest
from google.protobuf import timestamp_pb2

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform.errors import AlreadyExists
from mosaic.profile.v1 import profile_pb2, profile_service_pb2
from mosaic.testing.plugin import eventually
from mosaic.testing.scan import rows_mentioning
from profile_service.store import Change, Latest, StoredSnapshot, open_store

T0 = 1_790_000_000


@pytest.fixture
async def store(store_settings):
    store = await open_store(store_settings)
    yield store
    await store.close()


def stored(pid: str, version: int, at: int = T0) -> tuple[StoredSnapshot, Latest]:
    profile = profile_pb2.Profile(profile_id=pid, version=version, event_count=version)
    snapshot = profile_pb2.Snapshot(
        profile_id=pid,
        version=version,
        cause_message_id=f"m{version}",
        profile=profile,
        recorded_at=timestamp_pb2.Timestamp(seconds=at + version),
    )
    return StoredSnapshot(snapshot, full=version % 2 == 1), Latest(profile, '{"x": {}}')


async def test_a_saved_snapshot_is_the_latest_and_marks_its_event(store):
    pid = str(uuid.uuid4())
    assert await store.latest(pid) is None
    for version in (1, 2):
        await store.save(*stored(pid, version))
    latest = await store.latest(pid)
    assert latest.profile.version == 2 and latest.aggregates == '{"x": {}}'
    assert await store.applied_version(pid, "m1") == 1
    assert await store.applied_version(pid, "m3") is None
    [one, two] = await store.snapshots(pid, 1, 2)
    assert (one.full, two.full) == (True, False) and two.snapshot.profile.event_count == 2


async def test_snapshots_page_newest_first_across_partition_buckets(store):
    pid = str(uuid.uuid4())
    for version in range(995, 1006):  # crosses the bucket boundary at 1000
        await store.save(*stored(pid, version))
    assert [s.version for s in await store.list_snapshots(pid, 1006, 4)] == [1005, 1004, 1003, 1002]
    assert [s.version for s in await store.list_snapshots(pid, 1002, 4)] == [1001, 1000, 999, 998]
    assert [s.snapshot.version for s in await store.snapshots(pid, 998, 1001)] == [998, 999, 1000, 1001]


async def test_the_version_at_a_time_is_the_last_recorded_before_it(store):
    pid = str(uuid.uuid4())
    for version in (1, 2, 3):
        await store.save(*stored(pid, version))
    assert await store.version_at(pid, (T0 + 0) * 1_000_000) == 0
    assert await store.version_at(pid, (T0 + 2) * 1_000_000) == 2
    assert await store.version_at(pid, (T0 + 2) * 1_000_000 + 999_999) == 2
    assert await store.version_at(pid, (T0 + 90 * 86400) * 1_000_000) == 3  # months later


async def test_identifiers_find_their_profile(store):
    value = str(uuid.uuid4())
    assert await store.profile_of("email", value) is None
    await store.index_identifier("email", value, "p-1")
    assert await store.profile_of("email", value) == "p-1"


async def test_the_archive_pages_a_profiles_events_newest_first(store):
    pid = str(uuid.uuid4())
    for i in range(5):
        e = event_pb2.Event(
            message_id=f"m{i}", event="Clicked", timestamp=timestamp_pb2.Timestamp(seconds=T0 + i * 43200)
        )
        await store.archive(
            pid,
            resolved_pb2.ResolvedEvent(
                profile_id=pid, event=e, identifiers=[identity_pb2.Identifier(type="user_id", value="u")]
            ),
            "Clicked",
            3600,
        )
    events = await store.events(pid, T0 * 1_000_000, (T0 + 10 * 86400) * 1_000_000, 3)
    assert [r.event.message_id for r in events] == ["m4", "m3", "m2"]
    assert events[0].identifiers[0].value == "u", "kept with the identifiers it was resolved by"
    older = await store.events(pid, T0 * 1_000_000, events[-1].event.timestamp.ToMicroseconds(), 3)
    assert [r.event.message_id for r in older] == ["m1", "m0"]


async def test_scan_yields_every_profile_once_with_its_survivor(store):
    pids = sorted(str(uuid.uuid4()) for _ in range(3))
    for pid in pids:
        await store.save(*stored(pid, 1))
    await store.set_merged_into(pids[0], pids[1])
    seen = {p.profile_id: merged_into async for p, merged_into in store.scan()}
    assert set(pids) <= set(seen) and [seen[pid] for pid in pids] == [pids[1], "", ""]
    scanned = [p.profile_id async for p, _ in store.scan()]
    assert len(scanned) == len(set(scanned))
    kept = [p.profile_id async for p, _ in store.scan(keep=lambda profile_id: profile_id in pids[1:])]
    assert sorted(kept) == pids[1:]
    page = profile_service_pb2.ScanProfilesResponse()  # decoded in place, as a scan page is filled
    into = [p async for p, _ in store.scan(keep=lambda profile_id: profile_id in pids, into=page.profiles.add)]
    assert [p.profile_id for p in page.profiles] == [p.profile_id for p in into] and len(into) == 3
    assert all(p.version == 1 for p in page.profiles)


async def test_a_computed_trait_name_is_taken_once_and_can_be_deleted(store):
    name = f"t_{uuid.uuid4().hex[:8]}"
    definition = profile_pb2.ComputedTraitDefinition(name=name, aggregation=profile_pb2.AGGREGATION_COUNT, event="x")
    await store.create_definition(definition)
    with pytest.raises(AlreadyExists):
        await store.create_definition(definition)
    assert name in {d.name for d in await store.definitions()}
    assert await store.delete_definition(name) is True
    assert await store.delete_definition(name) is False


async def test_backfill_records_are_kept_per_partition_and_deleted_with_their_definition(store):
    def series(name: str, created_us: int) -> profile_pb2.ComputedTraitDefinition:
        definition = profile_pb2.ComputedTraitDefinition(
            name=name, aggregation=profile_pb2.AGGREGATION_DAILY, event="x"
        )
        definition.created_at.FromMicroseconds(created_us)
        return definition

    first, other = series(f"s_{uuid.uuid4().hex[:8]}", 1_000), series(f"s_{uuid.uuid4().hex[:8]}", 1_000)
    await store.create_definition(first)
    assert await store.backfills(first) == {}
    await store.set_backfilled(first, 0, 0)  # a partition whose backfill published nothing
    await store.set_backfilled(first, 3, 2**40)  # stream sequences are 64-bit
    await store.set_backfilled(other, 3, 7)
    assert await store.backfills(first) == {0: 0, 3: 2**40}
    assert await store.delete_definition(first.name) is True
    assert await store.backfills(first) == {}, "a name defined again is backfilled again"
    assert await store.backfills(other) == {3: 7}
    # A pass of the deleted definition records late: the name defined again is not backfilled by it.
    await store.set_backfilled(first, 1, 5)
    assert await store.backfills(series(first.name, 2_000)) == {}


async def test_a_merged_away_profile_points_at_its_survivor_until_split(store):
    known, unknown = str(uuid.uuid4()), str(uuid.uuid4())
    await store.save(*stored(known, 1))
    for pid in (known, unknown):
        await store.set_merged_into(pid, "survivor")
        assert (await store.latest(pid)).merged_into == "survivor"
    await store.save(*stored(known, 2))
    assert (await store.latest(known)).merged_into == "survivor", "a later save keeps the pointer"
    assert (await store.latest(unknown)).profile.version == 0
    await store.set_merged_into(known, "")
    assert (await store.latest(known)).merged_into == ""


def archived(pid: str, message_id: str, at: int) -> resolved_pb2.ResolvedEvent:
    event = event_pb2.Event(
        message_id=message_id,
        type=event_pb2.EVENT_TYPE_TRACK,
        event="Viewed",
        timestamp=timestamp_pb2.Timestamp(seconds=at),
    )
    return resolved_pb2.ResolvedEvent(profile_id=pid, event=event)


async def test_a_batch_of_changes_is_written_as_its_saves_would_be_and_read_back_by_heads(store):
    a, b, untouched = (str(uuid.uuid4()) for _ in range(3))
    await store.save(*stored(a, 1))
    changes = []
    for pid, versions in ((a, (2, 3, 4)), (b, (1, 2))):
        snapshots = [stored(pid, v)[0] for v in versions]
        change = Change(
            stored(pid, versions[-1])[1],
            snapshots,
            marker_ttl=3600,
            archived=[(archived(pid, f"m{v}", T0 + v), "Viewed") for v in versions],
            identifiers=[("email", f"{pid}@example.com")],
        )
        changes.append(change)
    await store.save_changes(changes, 86400 * 365 * 10)
    assert [s.snapshot.version for s in await store.snapshots(a, 1, 4)] == [1, 2, 3, 4]
    assert (await store.latest(b)).profile.version == 2
    assert await store.version_at(b, (T0 + 1) * 1_000_000) == 1, "the time index starts at the batch's first version"
    assert await store.profile_of("email", f"{a}@example.com") == a
    events = await store.events(a, T0 * 1_000_000, (T0 + 10) * 1_000_000, 10)
    assert [e.event.message_id for e in events] == ["m4", "m3", "m2"]
    latest, applied = await store.heads({a: ["m1", "m3", "m9"], b: ["m2"], untouched: ["m1"]})
    assert {pid: head.profile.version for pid, head in latest.items()} == {a: 4, b: 2}
    assert applied == {(a, "m1"): 1, (a, "m3"): 3, (b, "m2"): 2}
    assert await store.heads({}) == ({}, {})


async def test_a_change_larger_than_one_cassandra_batch_is_written_whole(store):
    pid = str(uuid.uuid4())
    versions = range(1, 81)
    events = []
    for v in versions:  # 80 events of ~2 KB in one day's partition: far above Cassandra's 50 KiB batch limit
        event = archived(pid, f"m{v}", T0 + v)
        event.event.properties.update({"note": "x" * 2000})
        events.append((event, "Viewed"))
    change = Change(stored(pid, 80)[1], [stored(pid, v)[0] for v in versions], archived=events, marker_ttl=3600)
    await store.save_changes([change], 86400 * 365 * 10)
    found = await store.events(pid, T0 * 1_000_000, (T0 + 100) * 1_000_000, 100)
    assert len(found) == 80
    assert len(await store.snapshots(pid, 1, 80)) == 80


async def test_snapshots_expire_with_their_retention_and_the_embedded_sweeper_deletes_them(store_settings):
    # A few seconds' retention (long enough to read the write back on a busy machine): on
    # Cassandra a TTL on the write, on SQLite an expiry column.
    store = await open_store(store_settings, snapshot_ttl=4)
    try:
        pid = str(uuid.uuid4())
        now = int(time.time())
        await store.save(*stored(pid, 1, at=now - 1))
        assert [s.snapshot.version for s in await store.snapshots(pid, 1, 1)] == [1]
        assert await store.version_at(pid, (now + 10) * 1_000_000) == 1

        async def gone() -> bool:
            return not await store.snapshots(pid, 1, 1) and await store.version_at(pid, (now + 10) * 1_000_000) == 0

        await eventually(gone, timeout=60)
        assert (await store.latest(pid)).profile.version == 1, "the latest state is not history: it stays"
        assert await store.list_snapshots(pid, 2, 10) == []
        if hasattr(store, "sweep"):  # the embedded store: the rows themselves go with the sweep
            assert (await store.sweep(time.time_ns() // 1000))["snapshots"] == 1
            assert await store.db.execute("SELECT count(*) FROM profile_snapshots WHERE profile_id = ?", (pid,)) == [
                (0,)
            ]
    finally:
        await store.close()


async def test_snapshots_without_a_retention_are_kept(store):
    pid = str(uuid.uuid4())
    await store.save(*stored(pid, 1))
    if hasattr(store, "sweep"):
        assert (await store.sweep((int(time.time()) + 10 * 365 * 86400) * 1_000_000))["snapshots"] == 0
    assert [s.snapshot.version for s in await store.snapshots(pid, 1, 1)] == [1]


async def test_archived_events_expire_with_their_retention(store):
    pid = str(uuid.uuid4())
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, event="Viewed", message_id="e-1")
    event.timestamp.GetCurrentTime()
    await store.archive(pid, resolved_pb2.ResolvedEvent(profile_id=pid, event=event), "Viewed", 4)
    window = (int(time.time()) - 86400) * 1_000_000, (int(time.time()) + 86400) * 1_000_000

    async def gone() -> bool:
        return await store.events(pid, *window, 10) == []

    assert await store.events(pid, *window, 10) != []
    await eventually(gone, timeout=60)
    if hasattr(store, "sweep"):
        assert (await store.sweep(time.time_ns() // 1000))["events"] >= 1


async def test_an_erasure_is_recorded_for_good_by_a_hash_of_the_profile_id(store):
    erased, kept = str(uuid.uuid4()), str(uuid.uuid4())
    assert await store.erased([erased, kept]) == set()
    await store.record_erasure(erased)
    await store.record_erasure(erased)  # a redelivered request records it again: one tombstone
    assert await store.erased([erased, kept]) == {erased} and await store.erased([]) == set()
    assert await rows_mentioning(store.db, [erased]) == []
