"""Applying events on the embedded store and a real nats-server: idempotent and repairable."""

import pytest

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from profile_service.cache import ProfileCache
from profile_service.config import Settings
from profile_service.profiles import Profiles
from profile_service.store import StoredSnapshot, open_store


@pytest.fixture
async def profiles(make_settings):
    platform = make_settings("profile")
    settings = Settings(platform, (), 90, 90, 3, 100)
    store = await open_store(platform)
    bus = await Bus.connect(platform.nats_url, "profile", platform.partitions)
    await bus.ensure_streams()
    yield Profiles(store, ProfileCache(100, platform.partitions, platform.owned_partitions), bus, settings)
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


async def test_a_crash_between_marker_and_latest_is_repaired_by_redelivery(profiles):
    await profiles.apply(resolved("m1", plan="free"))
    snapshot = await profiles.apply(resolved("m2", plan="pro"))
    # Simulate the crash: version 2's snapshot and marker written, the latest still version 1.
    first = (await profiles.store.snapshots("p-1", 1, 1))[0]
    await profiles.store.db.execute("UPDATE profile_latest SET version = 1, state = ? WHERE profile_id = ?",
                                    (first.snapshot.profile.SerializeToString(), "p-1"))
    profiles.cache._entries.clear()
    assert (await profiles.store.latest("p-1")).profile.version == 1
    await profiles.apply(resolved("m2", plan="pro"))
    latest = (await profiles.store.latest("p-1")).profile
    assert latest.version == 2 and latest.traits["plan"].value.string_value == "pro" and latest.event_count == 2
    assert snapshot.version == 2
