"""Applying events on the embedded store and a real nats-server: idempotent and repairable."""

import pytest

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from profile_service.cache import ProfileCache
from profile_service.config import Settings
from profile_service.profiles import Profiles
from profile_service.store import open_store


@pytest.fixture
async def profiles(make_settings):
    platform = make_settings("profile")
    settings = Settings(platform, (), 90, 90, 3, 100)
    store = await open_store(platform)
    bus = await Bus.connect(platform.nats_url, "profile", platform.partitions)
    await bus.ensure_streams()
    yield Profiles(store, ProfileCache(100, platform.partitions, range(platform.partitions)), bus, settings)
    await bus.close()
    await store.close()


def resolved(message_id: str, **traits) -> resolved_pb2.ResolvedEvent:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id="u", message_id=message_id)
    event.timestamp.GetCurrentTime()
    event.traits.update(traits)
    return resolved_pb2.ResolvedEvent(profile_id="p-1", event=event)


async def test_an_event_delivered_twice_is_counted_once(profiles):
    await profiles.apply(resolved("m1", plan="free"))
    await profiles.apply(resolved("m1", plan="free"))
    latest = await profiles.store.latest("p-1")
    assert latest.profile.event_count == 1 and latest.profile.version == 1
    info = await profiles.bus._js.stream_info(topics.PROFILE_UPDATED.stream)
    assert info.state.messages == 1, "the republished profile.updated is dropped as a duplicate"


async def test_versions_between_full_states_are_rebuilt_from_deltas(profiles):
    for i in range(7):  # full states at 1, 3 and 6 (every 3); deltas between
        await profiles.apply(resolved(f"m{i}", step=i))
    for version in range(1, 8):
        profile = await profiles.at_version("p-1", version)
        assert profile.version == version and profile.traits["step"].value.number_value == version - 1


async def test_a_snapshot_orphaned_by_a_crash_is_overwritten_and_its_event_applied_later(profiles):
    await profiles.apply(resolved("m1", plan="free"))
    # The crash: m2's snapshot of version 2 written, the atomic rest (marker, latest) not.
    orphan = (await profiles.store.snapshots("p-1", 1, 1))[0]
    orphan.snapshot.version = 2
    orphan.snapshot.cause_message_id = "m2"
    await profiles.store.db.execute(
        "INSERT OR REPLACE INTO profile_snapshots (profile_id, version, snapshot, is_full) VALUES (?, ?, ?, 1)",
        ("p-1", 2, orphan.snapshot.SerializeToString()),
    )
    await profiles.apply(resolved("m3", city="Paris"))  # overtakes m2 after the crash
    await profiles.apply(resolved("m2", plan="pro"))  # redelivered
    latest = (await profiles.store.latest("p-1")).profile
    assert latest.event_count == 3 and latest.version == 3
    assert latest.traits["plan"].value.string_value == "pro" and latest.traits["city"].value.string_value == "Paris"
    causes = [s.snapshot.cause_message_id for s in await profiles.store.snapshots("p-1", 1, 3)]
    assert causes == ["m1", "m3", "m2"]
