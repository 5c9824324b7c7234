"""What a crash leaves behind is finished or discarded: expired locks, outbox entries of
merges that never happened, redelivered events. On the embedded store (the contract suite
shows both stores keep the same conditions)."""

import time

import pytest

from identity_service.app import components
from identity_service.config import Settings
from identity_service.outbox import Outbox
from identity_service.resolver import now_ms, profile_id_for
from identity_service.store import OutboxEntry, open_store
from mosaic.events.v1 import event_pb2
from mosaic.platform.config import PlatformSettings


class RecordingBus:
    def __init__(self) -> None:
        self.published: list[tuple[str, str, str]] = []

    async def publish(self, topic, key, message, message_id) -> bool:
        self.published.append((topic.name, key, message_id))
        return False


@pytest.fixture
async def parts(tmp_path):
    platform = PlatformSettings.from_env("identity", {"MOSAIC_AUTH": "off", "MOSAIC_DATA_DIR": str(tmp_path)})
    store = await open_store(platform)
    yield store, *components(store, Settings(platform, lease_seconds=0.5))
    await store.close()


def identify(message_id: str, **fields) -> event_pb2.Event:
    email = fields.pop("email", None)
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, message_id=message_id, **fields)
    if email:
        event.traits.update({"email": email})
    event.timestamp.FromMilliseconds(now_ms())
    return event


async def test_the_lock_of_a_crashed_replica_only_delays_others_until_its_lease_ends(parts):
    store, resolver, _, events = parts
    first = await events.resolve(identify("m1", anonymous_id="a1"))
    # A replica took the lock and died: nobody releases it.
    assert (await store.lock(first.profile_id, "dead", now_ms(), now_ms() + 400))[0]
    began = time.monotonic()
    second = await events.resolve(identify("m2", anonymous_id="a1", user_id="u1"))
    assert second.profile_id == first.profile_id
    assert 0.2 < time.monotonic() - began < 5.0
    assert await resolver.lookup(("user_id", "u1")) == first.profile_id


async def test_a_replayed_event_that_created_a_profile_names_it_the_same(parts):
    _, _, _, events = parts
    first = await events.resolve(identify("m1", anonymous_id="a1", email="a@example.com"))
    again = await events.resolve(identify("m1", anonymous_id="a1", email="a@example.com"))
    assert first.profile_id == again.profile_id == profile_id_for("m1")
    assert again.resolution.plan is None, "the replay changed nothing"


async def test_a_merge_is_published_once_and_an_entry_of_a_merge_that_never_happened_is_dropped(parts):
    store, _, _, events = parts
    bus = RecordingBus()
    outbox = Outbox(store, bus, abandon_after=0.0)
    await events.resolve(identify("m1", anonymous_id="a1"))
    await events.resolve(identify("m2", anonymous_id="a2"))
    merged = await events.resolve(identify("m3", anonymous_id="a1", email="x@example.com"))
    merged = await events.resolve(identify("m4", anonymous_id="a2", email="x@example.com"))
    [record] = merged.resolution.merges
    # An attempt that wrote its entry, then lost its lock (or crashed) before the merge LWT:
    stale = OutboxEntry(f"{record.merge_id}-never/h", "identity.merged", "p", _never_happened(record))
    await store.outbox_put(stale)
    assert await outbox.drain() == 1
    assert await outbox.drain() == 0
    assert [m for _, _, m in bus.published] == [record.merge_id]
    assert await store.outbox_pending() == [], "the stale entry is dropped once its lease is long over"


def _never_happened(record) -> bytes:
    from mosaic.events.v1 import identity_changed_pb2

    return identity_changed_pb2.IdentityMerged(
        merge_id=f"{record.merge_id}-never",
        survivor_profile_id=record.survivor_profile_id,
        merged_profile_ids=[record.merged_profile_id],
    ).SerializeToString()
