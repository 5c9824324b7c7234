"""Suppression: a test publisher stands in for the consent service's erasure requests."""

from __future__ import annotations

import pytest

from mosaic.events.v1 import event_pb2, suppression_changed_pb2 as sc
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.testing.plugin import eventually
from ingestion_service.suppression import SuppressionList


async def publish(nats_url: str, change: sc.SuppressionChanged, message_id: str) -> None:
    bus = await Bus.connect(nats_url, "consent-test-publisher", 4)
    try:
        await bus.publish(topics.SUPPRESSION_CHANGED, change.profile_id, change, message_id)
    finally:
        await bus.close()


def erasure(lifted: bool = False) -> sc.SuppressionChanged:
    return sc.SuppressionChanged(profile_id="p-ada", request_id="req-1", lifted=lifted, identifiers=[
        sc.SuppressedIdentifier(type="user_id", value="ada"),
        sc.SuppressedIdentifier(type="email", value="Ada@Example.com"),
        sc.SuppressedIdentifier(type="phone", value="+44 20 7946 0018"),
    ])


def identify(user_id: str = "", anonymous_id: str = "", **traits) -> event_pb2.Event:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id=user_id, anonymous_id=anonymous_id)
    event.traits.update(traits)
    return event


async def test_events_of_an_erased_person_are_dropped_and_counted(ingestion, stub, stored, nats_server, tmp_path):
    await publish(nats_server.url, erasure(), "erase-1")
    await eventually(lambda: len(ingestion.parts.suppression) == 3)
    answer = await stub.Ingest(pb.IngestRequest(source_id="web", events=[
        identify("ada"),
        identify(anonymous_id="device-9", email="  ada@example.COM"),  # the same address, written otherwise
        identify(anonymous_id="device-8", phone="+442079460018"),
        identify("grace"),
    ]))
    assert [r.status for r in answer.results] == [pb.EVENT_STATUS_SUPPRESSED] * 3 + [pb.EVENT_STATUS_ACCEPTED]
    assert ingestion.parts.suppression.dropped == 3
    assert [event.user_id for _, event in await stored()] == ["grace"]
    # Only salted hashes are kept: the identifiers appear nowhere in the store's files.
    for path in (tmp_path / "data").glob("ingestion.db*"):
        content = path.read_bytes()
        assert b"ada@example.com" not in content.lower() and b"7946" not in content


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
