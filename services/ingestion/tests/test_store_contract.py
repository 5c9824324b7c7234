"""Ingestion's repository contract, on SQLite and on Cassandra."""

import uuid

import pytest
from google.protobuf import timestamp_pb2

from ingestion_service.store import open_store
from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import quarantine_pb2, source_pb2


@pytest.fixture
async def store(store_settings):
    store = await open_store(store_settings)
    yield store
    await store.close()


def new_id() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


async def test_a_source_is_created_once_and_read_back_whole(store):
    source = source_pb2.Source(source_id=new_id(), name="Web", disabled=True)
    source.tracking_plan.events["Signed Up"].update({"type": "object"})
    assert await store.create_source(source) is True
    assert await store.create_source(source_pb2.Source(source_id=source.source_id, name="Other")) is False
    assert await store.get_source(source.source_id) == source
    source.name = "Website"
    await store.save_source(source)
    assert (await store.get_source(source.source_id)).name == "Website"
    assert source.source_id in [s.source_id for s in await store.list_sources()]
    assert await store.get_source(new_id()) is None


async def test_write_keys_are_found_by_hash_and_their_expiry_changes(store):
    source_id = new_id()
    first = source_pb2.WriteKey(key_id="wk_aaaa", created_at=timestamp_pb2.Timestamp(seconds=100))
    second = source_pb2.WriteKey(key_id="wk_bbbb", created_at=timestamp_pb2.Timestamp(seconds=200))
    await store.add_write_key(source_id, "hash-a-" + source_id, first)
    await store.add_write_key(source_id, "hash-b-" + source_id, second)
    assert await store.key_owner("hash-a-" + source_id) == (source_id, 0)
    await store.set_key_expiry(source_id, "hash-a-" + source_id, 5_000)
    assert await store.key_owner("hash-a-" + source_id) == (source_id, 5_000)
    keys = await store.write_keys(source_id)
    assert [(h, k.key_id, k.expires_at.ToMilliseconds()) for h, k in keys] == [
        ("hash-a-" + source_id, "wk_aaaa", 5_000),
        ("hash-b-" + source_id, "wk_bbbb", 0),
    ]
    assert await store.key_owner("unknown") is None


async def test_quarantined_events_are_kept_listed_in_pages_and_deleted(store):
    source_id = new_id()
    for message_id in ("m3", "m1", "m2"):
        kept = quarantine_pb2.QuarantinedEvent(
            source_id=source_id,
            field="properties.price",
            reason="'x' is not of type 'number'",
            event=event_pb2.Event(message_id=message_id, type=event_pb2.EVENT_TYPE_TRACK, user_id="u", event="Bought"),
        )
        await store.put_quarantined(kept, retention_days=1, people=[])
    await store.put_quarantined(kept, retention_days=1, people=[])  # kept again: still one
    first = await store.list_quarantined(source_id, "", 2)
    assert [k.event.message_id for k in first] == ["m1", "m2"]
    rest = await store.list_quarantined(source_id, "m2", 2)
    assert [k.event.message_id for k in rest] == ["m3"]
    assert (await store.get_quarantined(source_id, "m2")).reason == "'x' is not of type 'number'"
    await store.delete_quarantined(source_id, "m2")
    assert await store.get_quarantined(source_id, "m2") is None
    assert len(await store.list_quarantined(source_id, "", 10)) == 2


async def test_quarantined_events_are_found_by_the_people_they_name_until_unlinked(store):
    source_id, ada, grace = new_id(), uuid.uuid4().hex, uuid.uuid4().hex
    for message_id, people in (("m1", [ada, grace]), ("m2", [ada]), ("m3", [grace])):
        kept = quarantine_pb2.QuarantinedEvent(source_id=source_id, event=event_pb2.Event(message_id=message_id))
        await store.put_quarantined(kept, retention_days=1, people=people)
    assert sorted(await store.quarantined_naming(ada)) == [(source_id, "m1"), (source_id, "m2")]
    await store.unlink_quarantined(ada, source_id, "m1")
    assert await store.quarantined_naming(ada) == [(source_id, "m2")]
    assert sorted(await store.quarantined_naming(grace)) == [(source_id, "m1"), (source_id, "m3")]
    assert await store.get_quarantined(source_id, "m1") is not None  # unlinking keeps the event
    assert await store.quarantined_naming(uuid.uuid4().hex) == []


async def test_the_suppression_list_holds_hashes_added_and_removed(store):
    hashes = [uuid.uuid4().hex for _ in range(5)]
    await store.add_suppressed(hashes)
    await store.add_suppressed(hashes[:1])
    await store.remove_suppressed(hashes[3:])
    assert set(hashes[:3]) <= await store.suppressed()
    assert not set(hashes[3:]) & await store.suppressed()


async def test_a_setting_keeps_the_first_value_stored(store):
    name = new_id()
    assert await store.setting(name, "first") == "first"
    assert await store.setting(name, "second") == "first"


async def test_consent_states_are_kept_by_hash_replaced_and_forgotten(store):
    first, second, absent = new_id(), new_id(), new_id()
    await store.put_consent_states({first: b"state-1", second: b"state-1"})
    await store.put_consent_states({first: b"state-2"})
    assert await store.consent_states([first, second, absent]) == {first: b"state-2", second: b"state-1"}
    many = [new_id() for _ in range(130)]  # past one read's chunk
    await store.put_consent_states(dict.fromkeys(many, b"x"))
    assert len(await store.consent_states(many)) == 130
    await store.delete_consent_states([first, *many])
    assert await store.consent_states([first, second, *many]) == {second: b"state-1"}
