"""Quarantine over gRPC: events that fail a plan are kept with the reason, then listed,
inspected, replayed once the plan or the data is fixed, or discarded."""

from __future__ import annotations

import base64

import aiohttp
import grpc
import pytest
from google.protobuf import json_format

from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import source_pb2

PLAN = {
    "events": {"Bought": {"type": "object", "required": ["price"], "properties": {"price": {"type": "number"}}}},
    "unplanned": "PLAN_ACTION_QUARANTINE",
    "invalid": "PLAN_ACTION_QUARANTINE",
}


def bought(message_id: str, **properties) -> event_pb2.Event:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, message_id=message_id, user_id="ada", event="Bought")
    event.properties.update(properties)
    return event


@pytest.fixture
async def shop(stub, create_source):
    plan = json_format.ParseDict(PLAN, source_pb2.TrackingPlan())
    return await create_source("shop", tracking_plan=plan)


async def test_an_event_that_fails_the_plan_is_kept_with_the_reason_and_not_stored(stub, shop, stored):
    answer = await stub.Ingest(
        pb.IngestRequest(source_id="shop", events=[bought("q1", price="free"), bought("ok", price=3)])
    )
    assert [r.status for r in answer.results] == [pb.EVENT_STATUS_QUARANTINED, pb.EVENT_STATUS_ACCEPTED]
    assert (answer.results[0].field, answer.results[0].reason) == ("properties.price", "'free' is not of type 'number'")
    assert [m for m, _ in await stored()] == ["shop:ok"]
    kept = (await stub.GetQuarantinedEvent(pb.GetQuarantinedEventRequest(source_id="shop", message_id="q1"))).event
    assert kept.source_id == "shop" and kept.reason == "'free' is not of type 'number'"
    assert kept.event.properties["price"] == "free" and kept.event.HasField("received_at")


async def test_the_quarantine_is_listed_in_pages(stub, shop):
    await stub.Ingest(pb.IngestRequest(source_id="shop", events=[bought(f"q{i}") for i in range(5)]))
    first = await stub.ListQuarantinedEvents(pb.ListQuarantinedEventsRequest(source_id="shop", page_size=3))
    rest = await stub.ListQuarantinedEvents(
        pb.ListQuarantinedEventsRequest(source_id="shop", page_size=3, page_token=first.next_page_token)
    )
    assert [k.event.message_id for k in first.events] == ["q0", "q1", "q2"]
    assert [k.event.message_id for k in rest.events] == ["q3", "q4"] and rest.next_page_token == ""


async def test_a_replay_after_the_plan_is_fixed_stores_the_event_and_empties_the_quarantine(stub, shop, stored):
    await stub.Ingest(pb.IngestRequest(source_id="shop", events=[bought("q1", price="free")]))
    fixed = json_format.ParseDict(PLAN, source_pb2.TrackingPlan())
    fixed.events["Bought"].Clear()  # any properties will do
    await stub.UpdateSource(
        pb.UpdateSourceRequest(
            source=source_pb2.Source(source_id="shop", tracking_plan=fixed), update_mask={"paths": ["tracking_plan"]}
        )
    )
    replayed = await stub.ReplayQuarantinedEvent(pb.ReplayQuarantinedEventRequest(source_id="shop", message_id="q1"))
    assert replayed.result.status == pb.EVENT_STATUS_ACCEPTED
    assert [m for m, _ in await stored()] == ["shop:q1"]
    assert (await stub.ListQuarantinedEvents(pb.ListQuarantinedEventsRequest(source_id="shop"))).events == []


async def test_a_replay_with_fixed_data_stores_the_fix_and_a_failing_one_stays_kept(stub, shop, stored):
    await stub.Ingest(pb.IngestRequest(source_id="shop", events=[bought("q1", price="free")]))
    still_bad = await stub.ReplayQuarantinedEvent(
        pb.ReplayQuarantinedEventRequest(source_id="shop", message_id="q1", event=bought("", price=[1]))
    )
    assert still_bad.result.status == pb.EVENT_STATUS_QUARANTINED
    kept = (await stub.GetQuarantinedEvent(pb.GetQuarantinedEventRequest(source_id="shop", message_id="q1"))).event
    assert kept.reason == "[1.0] is not of type 'number'"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReplayQuarantinedEvent(
            pb.ReplayQuarantinedEventRequest(source_id="shop", message_id="q1", event=bought("other", price=1))
        )
    assert caught.value.details() == "event.message_id: must be unset or the kept event's"
    fixed = await stub.ReplayQuarantinedEvent(
        pb.ReplayQuarantinedEventRequest(source_id="shop", message_id="q1", event=bought("", price=0))
    )
    assert fixed.result.status == pb.EVENT_STATUS_ACCEPTED
    [(msg_id, event)] = await stored()
    assert msg_id == "shop:q1" and event.properties["price"] == 0


async def test_a_replayed_fix_keeps_the_kept_event_times(stub, shop, stored):
    late = bought("q1", price="free")
    late.timestamp.FromSeconds(1_700_000_000)
    late.sent_at.FromSeconds(1_700_000_060)  # sent a minute after it happened, by the client's clock
    await stub.Ingest(pb.IngestRequest(source_id="shop", events=[late]))
    kept = (await stub.GetQuarantinedEvent(pb.GetQuarantinedEventRequest(source_id="shop", message_id="q1"))).event
    await stub.ReplayQuarantinedEvent(
        pb.ReplayQuarantinedEventRequest(source_id="shop", message_id="q1", event=bought("", price=1))
    )
    [(_, event)] = await stored()
    assert event.original_timestamp.seconds == 1_700_000_000
    assert event.timestamp == kept.event.timestamp and event.timestamp.seconds > 1_700_000_000


async def test_a_discarded_event_is_gone(stub, shop):
    await stub.Ingest(pb.IngestRequest(source_id="shop", events=[bought("q1")]))
    await stub.DiscardQuarantinedEvent(pb.DiscardQuarantinedEventRequest(source_id="shop", message_id="q1"))
    for call in (
        stub.GetQuarantinedEvent(pb.GetQuarantinedEventRequest(source_id="shop", message_id="q1")),
        stub.DiscardQuarantinedEvent(pb.DiscardQuarantinedEventRequest(source_id="shop", message_id="q1")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_over_http_a_quarantined_event_is_a_success_for_the_sdk(ingestion, stub, shop, stored):
    auth = "Basic " + base64.b64encode(f"{shop}:".encode()).decode()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{ingestion.http_url}/v1/track",
            headers={"Authorization": auth},
            json={"messageId": "h1", "userId": "ada", "event": "Refunded"},
        ) as response:
            assert (response.status, await response.json()) == (200, {"success": True})
    kept = (await stub.GetQuarantinedEvent(pb.GetQuarantinedEventRequest(source_id="shop", message_id="h1"))).event
    assert kept.reason == "'Refunded' is not in the tracking plan"
    assert await stored() == []


async def test_a_full_last_page_of_the_quarantine_has_no_next_token_and_a_bad_token_is_refused(stub, shop):
    await stub.Ingest(pb.IngestRequest(source_id="shop", events=[bought(f"q{i}") for i in range(4)]))
    first = await stub.ListQuarantinedEvents(pb.ListQuarantinedEventsRequest(source_id="shop", page_size=2))
    last = await stub.ListQuarantinedEvents(
        pb.ListQuarantinedEventsRequest(source_id="shop", page_size=2, page_token=first.next_page_token)
    )
    assert [k.event.message_id for k in last.events] == ["q2", "q3"] and last.next_page_token == ""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListQuarantinedEvents(pb.ListQuarantinedEventsRequest(source_id="shop", page_token="q1\n"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in refused.value.details()
