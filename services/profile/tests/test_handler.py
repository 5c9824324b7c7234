"""The events.resolved handler on the embedded store and a real nats-server: idempotent."""

import pytest

from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus, Delivery
from profile_service.app import ResolvedEventHandler
from profile_service.store import open_store


@pytest.fixture
async def handler(make_settings):
    settings = make_settings("profile")
    store = await open_store(settings)
    bus = await Bus.connect(settings.nats_url, "profile", settings.partitions)
    await bus.ensure_streams()
    yield ResolvedEventHandler(store, bus)
    await bus.close()
    await store.close()


def resolved(message_id: str, **traits) -> resolved_pb2.ResolvedEvent:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id="u", message_id=message_id)
    event.received_at.GetCurrentTime()
    event.traits.update(traits)
    return resolved_pb2.ResolvedEvent(profile_id="p-1", event=event)


DELIVERY = Delivery("events.resolved.0", 0, 1, 1, "")


async def test_an_event_delivered_twice_is_counted_once(handler):
    await handler(resolved("m1", plan="free"), DELIVERY)
    await handler(resolved("m1", plan="free"), DELIVERY)
    profile = await handler.store.latest("p-1")
    assert profile.event_count == 1 and profile.version == 1
    info = await handler.bus._js.stream_info(topics.PROFILE_UPDATED.stream)
    assert info.state.messages == 1, "the republished profile.updated is dropped as a duplicate"


async def test_a_crash_between_marker_and_latest_is_repaired_by_redelivery(handler):
    await handler(resolved("m1", plan="free"), DELIVERY)
    first = await handler.store.snapshot("p-1", 1)
    # Simulate the crash: the snapshot and marker of version 2 written, the latest not.
    second = type(first)()
    second.CopyFrom(first)
    second.version = second.profile.version = 2
    second.cause_message_id = "m2"
    await handler.store.db.execute("INSERT INTO profile_snapshots VALUES (?, ?, ?)", ("p-1", 2, second.SerializeToString()))
    await handler.store.db.execute("INSERT INTO profile_applied_events VALUES (?, ?, ?)", ("p-1", "m2", 2))
    assert (await handler.store.latest("p-1")).version == 1
    await handler(resolved("m2", plan="pro"), DELIVERY)
    assert (await handler.store.latest("p-1")).version == 2
