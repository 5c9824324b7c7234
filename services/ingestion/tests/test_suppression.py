"""Suppression: a test publisher stands in for the consent service's erasure requests."""

from __future__ import annotations

import uuid

import grpc
import nats
import pytest

from ingestion_service.store import open_store
from ingestion_service.suppression import SuppressionList
from mosaic.events.v1 import event_pb2
from mosaic.events.v1 import suppression_changed_pb2 as sc
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc, quarantine_pb2, source_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.testing.plugin import eventually


async def publish(nats_url: str, change: sc.SuppressionChanged, message_id: str) -> None:
    bus = await Bus.connect(nats_url, "consent-test-publisher", 4)
    try:
        await bus.publish(topics.SUPPRESSION_CHANGED, change.profile_id, change, message_id)
    finally:
        await bus.close()


def erasure(lifted: bool = False) -> sc.SuppressionChanged:
    return sc.SuppressionChanged(
        profile_id="p-ada",
        request_id="req-1",
        lifted=lifted,
        identifiers=[
            sc.SuppressedIdentifier(type="user_id", value="ada"),
            sc.SuppressedIdentifier(type="email", value="Ada@Example.com"),
            sc.SuppressedIdentifier(type="phone", value="+44 20 7946 0018"),
        ],
    )


def identify(user_id: str = "", anonymous_id: str = "", **traits) -> event_pb2.Event:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id=user_id, anonymous_id=anonymous_id)
    event.traits.update(traits)
    return event


async def test_events_of_an_erased_person_are_dropped_and_counted(ingestion, stub, stored, nats_server, tmp_path):
    await publish(nats_server.url, erasure(), "erase-1")
    await eventually(lambda: len(ingestion.parts.suppression) == 3)
    answer = await stub.Ingest(
        pb.IngestRequest(
            source_id="web",
            events=[
                identify("ada"),
                identify(anonymous_id="device-9", email="  ada@example.COM"),  # the same address, written otherwise
                identify(anonymous_id="device-8", phone="+442079460018"),
                identify("grace"),
            ],
        )
    )
    assert [r.status for r in answer.results] == [pb.EVENT_STATUS_SUPPRESSED] * 3 + [pb.EVENT_STATUS_ACCEPTED]
    assert ingestion.parts.suppression.dropped == 3
    assert [event.user_id for _, event in await stored()] == ["grace"]
    # Only salted hashes are kept: the identifiers appear nowhere in the store's files.
    for path in (tmp_path / "data").glob("ingestion.db*"):
        content = path.read_bytes()
        assert b"ada@example.com" not in content.lower() and b"7946" not in content


async def test_an_applied_change_is_erased_from_the_stream(ingestion, nats_server):
    # The change names the person in clear: once the list has its hashes it is overwritten on
    # disk, not kept for the stream's 7 days.
    await publish(nats_server.url, erasure(), "erase-1")
    await eventually(lambda: len(ingestion.parts.suppression) == 3)

    async def stream_is_empty() -> bool:
        nc = await nats.connect(nats_server.url)
        try:
            info = await nc.jetstream().stream_info(topics.SUPPRESSION_CHANGED.stream)
            return info.state.messages == 0 and info.state.last_seq == 1
        finally:
            await nc.close()

    await eventually(stream_is_empty)
    files = [path for path in (nats_server.dir / "store").rglob("*") if path.is_file()]
    assert files and not any(b"Ada@Example.com" in path.read_bytes() for path in files)
    # Redelivered after the erase (a crash before the ack): the store has it, nothing breaks.
    bus = await Bus.connect(nats_server.url, "ingestion-test", 4)
    try:
        await bus.erase(topics.SUPPRESSION_CHANGED, 1)
    finally:
        await bus.close()


async def test_a_lifted_suppression_lets_events_through_again(ingestion, stub, nats_server):
    await publish(nats_server.url, erasure(), "erase-1")
    await eventually(lambda: len(ingestion.parts.suppression) == 3)
    await publish(nats_server.url, erasure(lifted=True), "lift-1")
    await eventually(lambda: len(ingestion.parts.suppression) == 0)
    answer = await stub.Ingest(pb.IngestRequest(source_id="web", events=[identify("ada")]))
    assert answer.results[0].status == pb.EVENT_STATUS_ACCEPTED


async def test_the_list_survives_a_restart_from_the_store(start_ingestion, nats_server):
    first = await start_ingestion()
    await publish(nats_server.url, erasure(), "erase-1")
    await eventually(lambda: len(first.parts.suppression) == 3)
    await first.service.stop()
    second = await start_ingestion()
    assert len(second.parts.suppression) == 3
    assert second.parts.suppression.matches(identify("ada"))


def test_the_hash_is_salted_and_reveals_nothing():
    one, other = SuppressionList(None, "salt-1"), SuppressionList(None, "salt-2")
    assert one.hash("email", "ada@example.com") == one.hash("email", " ADA@example.com ")
    assert one.hash("email", "ada@example.com") != other.hash("email", "ada@example.com")
    assert "ada" not in one.hash("user_id", "ada")
    assert one.hash("phone", "not a phone") is None


async def test_an_unknown_identifier_type_is_a_poison_message(ingestion):
    change = sc.SuppressionChanged(identifiers=[sc.SuppressedIdentifier(type="ssn", value="1")])
    with pytest.raises(Exception) as caught:
        await ingestion.parts.suppression(change, None)
    assert "identifiers[0].type" in str(caught.value)


# -- erasure clears the quarantine

UNPLANNED_ARE_KEPT = source_pb2.TrackingPlan(unplanned=source_pb2.PLAN_ACTION_QUARANTINE)


@pytest.fixture(params=["embedded", "cassandra"])
async def on_each_store(request, start_ingestion):
    """The service on each store; names are unique, as a Cassandra keyspace outlives one test."""
    environ = {}
    if request.param == "cassandra":
        keyspace = request.getfixturevalue("cassandra_keyspace")
        environ = {
            "MOSAIC_STORE": "cassandra",
            "MOSAIC_CASSANDRA_PORT": str(keyspace.port),
            "MOSAIC_CASSANDRA_KEYSPACE": keyspace.keyspace,
        }
    running = await start_ingestion(**environ)
    async with grpc.aio.insecure_channel(running.grpc_address) as channel:
        yield running, ingestion_service_pb2_grpc.IngestionServiceStub(channel), uuid.uuid4().hex[:8]


def unplanned(message_id: str, user_id: str = "", anonymous_id: str = "", **properties) -> event_pb2.Event:
    event = event_pb2.Event(
        type=event_pb2.EVENT_TYPE_TRACK,
        message_id=message_id,
        user_id=user_id,
        anonymous_id=anonymous_id,
        event="Unplanned",
    )
    event.properties.update(properties)
    return event


async def kept_ids(stub, source_id: str) -> list[str]:
    answer = await stub.ListQuarantinedEvents(pb.ListQuarantinedEventsRequest(source_id=source_id))
    return [kept.event.message_id for kept in answer.events]


async def test_an_erasure_deletes_the_quarantined_events_that_name_the_person(on_each_store, nats_server):
    running, stub, unique = on_each_store
    ada, grace, shop = f"ada-{unique}", f"grace-{unique}", f"shop-{unique}"
    await stub.CreateSource(
        pb.CreateSourceRequest(source=source_pb2.Source(source_id=shop, tracking_plan=UNPLANNED_ARE_KEPT))
    )
    answer = await stub.Ingest(
        pb.IngestRequest(
            source_id=shop,
            events=[
                unplanned("by-user-id", user_id=ada),
                unplanned("by-email", anonymous_id=f"device-{unique}", email=f" {ada.upper()}@Example.com"),
                unplanned("other-person", user_id=grace, friend=ada),  # names ada, but not as an identifier
            ],
        )
    )
    assert {r.status for r in answer.results} == {pb.EVENT_STATUS_QUARANTINED}
    suppression = running.parts.suppression
    people = [suppression.hash("user_id", ada), suppression.hash("email", f"{ada}@example.com")]
    for person in people:
        assert await running.parts.intake.store.quarantined_naming(person)

    await publish(
        nats_server.url,
        sc.SuppressionChanged(
            profile_id=f"p-{ada}",
            request_id="erase",
            identifiers=[
                sc.SuppressedIdentifier(type="user_id", value=ada),
                sc.SuppressedIdentifier(type="email", value=f"{ada}@example.com"),
            ],
        ),
        f"erase-{unique}",
    )
    await eventually(lambda: _equal(kept_ids(stub, shop), ["other-person"]))
    for person in people:  # the index of the erased person is gone too
        assert await running.parts.intake.store.quarantined_naming(person) == []


async def test_an_event_fixed_to_name_someone_else_is_not_erased_with_the_person(on_each_store):
    running, stub, unique = on_each_store
    ada, bob, shop = f"ada-{unique}", f"bob-{unique}", f"shop-{unique}"
    await stub.CreateSource(
        pb.CreateSourceRequest(source=source_pb2.Source(source_id=shop, tracking_plan=UNPLANNED_ARE_KEPT))
    )
    await stub.Ingest(pb.IngestRequest(source_id=shop, events=[unplanned("mixed-up", user_id=ada)]))
    fixed = await stub.ReplayQuarantinedEvent(
        pb.ReplayQuarantinedEventRequest(source_id=shop, message_id="mixed-up", event=unplanned("", user_id=bob))
    )
    assert fixed.result.status == pb.EVENT_STATUS_QUARANTINED  # kept again, now naming bob
    await running.parts.suppression(
        sc.SuppressionChanged(identifiers=[sc.SuppressedIdentifier(type="user_id", value=ada)]), None
    )
    assert await kept_ids(stub, shop) == ["mixed-up"]


async def test_a_lifted_suppression_erases_nothing(on_each_store, nats_server):
    running, stub, unique = on_each_store
    ada, shop = f"ada-{unique}", f"shop-{unique}"
    await stub.CreateSource(
        pb.CreateSourceRequest(source=source_pb2.Source(source_id=shop, tracking_plan=UNPLANNED_ARE_KEPT))
    )
    await stub.Ingest(pb.IngestRequest(source_id=shop, events=[unplanned("kept", user_id=ada)]))
    lift = sc.SuppressionChanged(lifted=True, identifiers=[sc.SuppressedIdentifier(type="user_id", value=ada)])
    await running.parts.suppression(lift, None)
    assert await kept_ids(stub, shop) == ["kept"]


async def test_a_replica_erases_what_it_kept_before_it_learned_of_the_erasure(store_settings):
    # Two replicas on one store: the first consumed the erasure; the second, not knowing yet,
    # quarantined an event of the person. Its next refresh of the list erases it.
    store = await open_store(store_settings)
    try:
        salt, ada, source_id = "salt", f"ada-{uuid.uuid4().hex[:8]}", f"s-{uuid.uuid4().hex[:8]}"
        first, second = SuppressionList(store, salt), SuppressionList(store, salt)
        await second.load()
        await first(sc.SuppressionChanged(identifiers=[sc.SuppressedIdentifier(type="user_id", value=ada)]), None)
        late = quarantine_pb2.QuarantinedEvent(source_id=source_id, event=unplanned("late", user_id=ada))
        await store.put_quarantined(late, 1, second.people(late.event))
        await second.refresh()
        assert await store.get_quarantined(source_id, "late") is None
    finally:
        await store.close()


async def _equal(actual, expected) -> bool:
    found = await actual
    assert found == expected
    return True
