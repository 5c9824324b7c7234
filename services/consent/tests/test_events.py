"""Consent from Segment events on events.resolved, on a real nats-server."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mosaic.consent.v1 import consent_service_pb2 as pb
from mosaic.consent.v1 import consent_service_pb2_grpc
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.testing.plugin import eventually


@pytest.fixture
async def service(start_consent):
    service = await start_consent(MOSAIC_PARTITIONS="2", MOSAIC_CONSENT_CATEGORIES="C0002=analytics")
    yield service
    await service.stop()


@pytest.fixture
async def stub(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield consent_service_pb2_grpc.ConsentServiceStub(channel)


def event(
    message_id: str, seconds: int, preferences: dict, name: str = "Page Viewed", **consent
) -> resolved_pb2.ResolvedEvent:
    e = event_pb2.Event(
        type=event_pb2.EVENT_TYPE_TRACK, event=name, user_id="ada", message_id=message_id, source_id="web"
    )
    e.timestamp.FromSeconds(seconds)
    e.context.update({"consent": {"categoryPreferences": preferences, **consent}})
    return resolved_pb2.ResolvedEvent(profile_id="p-ada", event=e)


async def send(service, resolved, nats_id: str | None = None) -> None:
    await service.runtime.bus.publish(
        topics.EVENTS_RESOLVED, resolved.profile_id, resolved, nats_id or resolved.event.message_id
    )


async def history(stub) -> list[tuple[str, bool, int]]:
    answer = await stub.ListConsentHistory(pb.ListConsentHistoryRequest(profile_id="p-ada"))
    return [(d.purpose, d.granted, d.decided_at.seconds) for d in answer.decisions]


async def state(stub) -> dict[str, bool]:
    answer = await stub.GetConsentState(pb.GetConsentStateRequest(profile_id="p-ada"))
    return {p.purpose: p.granted for p in answer.purposes}


async def test_the_update_event_records_each_category_once_even_redelivered(service, stub):
    update = event(
        "m-1",
        100,
        {"Advertising": True, "C0002": False, "Unknown Thing": True},
        name="Segment Consent Preference Updated",
    )
    await send(service, update)
    await send(service, update, "m-1-again")  # a redelivery under another NATS id
    await eventually(lambda: stub_has(stub, 2))
    await asyncio.sleep(0.5)
    assert sorted(await history(stub)) == [("advertising", True, 100), ("analytics", False, 100)]
    answer = await stub.ListConsentHistory(pb.ListConsentHistoryRequest(profile_id="p-ada"))
    assert {d.source for d in answer.decisions} == {"event:web"}
    assert (await state(stub))["advertising"] is True


async def stub_has(stub, count: int) -> bool:
    return len(await history(stub)) == count


async def test_ordinary_events_record_only_newer_differences(service, stub):
    await send(service, event("m-1", 100, {"Advertising": True}))
    await eventually(lambda: stub_has(stub, 1))
    await send(service, event("m-2", 200, {"Advertising": True}))  # the same: nothing new
    await send(service, event("m-3", 50, {"Advertising": False}))  # older than the state: nothing
    await send(service, event("m-4", 300, {"Advertising": False, "marketing": "yes"}))  # not a boolean: ignored
    await eventually(lambda: stub_has(stub, 2))
    await asyncio.sleep(0.5)
    assert await history(stub) == [("advertising", True, 100), ("advertising", False, 300)]
    assert (await state(stub))["advertising"] is False


async def test_the_gpc_flag_denies_sale_and_sharing(service, stub):
    await send(service, event("m-1", 100, {"Advertising": True}))
    await eventually(lambda: stub_has(stub, 1))
    await send(service, event("m-2", 200, {}, gpc=True))
    await eventually(lambda: stub_has(stub, 3))
    current = await state(stub)
    assert current["advertising"] is False and current["sale_sharing"] is False
