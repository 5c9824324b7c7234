"""Real traffic from the published Python SDKs of Segment and RudderStack, pointed at the
HTTP API by changing only the host; then what arrived in JetStream is checked."""

from __future__ import annotations

import asyncio

import pytest
import rudderstack.analytics.client as rudder
import segment.analytics.client as segment

from mosaic.events.v1 import event_pb2

T = event_pb2.EventType


def send_everything(client) -> None:
    """One call of each kind, as product code would make them, then flush (in a thread)."""
    client.identify("ada", {"email": "ada@example.com", "plan": "pro"})
    client.track("ada", "Signed Up", {"referrer": "ad", "seats": 3})
    client.page("ada", "Docs", "Home", {"url": "https://example.com/docs"})
    client.screen("ada", "Settings", "Profile")
    client.group("ada", "acme", {"name": "Acme"})
    client.alias("anon-1", "ada")
    client.flush()


def check_arrived(events: list[tuple[str, event_pb2.Event]], source_id: str, library: str) -> None:
    by_type = {event.type: event for _, event in events}
    assert len(events) == 6 and set(by_type) == {
        T.EVENT_TYPE_IDENTIFY,
        T.EVENT_TYPE_TRACK,
        T.EVENT_TYPE_PAGE,
        T.EVENT_TYPE_SCREEN,
        T.EVENT_TYPE_GROUP,
        T.EVENT_TYPE_ALIAS,
    }
    assert all(msg_id == f"{source_id}:{event.message_id}" for msg_id, event in events)
    assert all(event.source_id == source_id and event.user_id == "ada" for _, event in events)
    assert by_type[T.EVENT_TYPE_IDENTIFY].traits["email"] == "ada@example.com"
    track = by_type[T.EVENT_TYPE_TRACK]
    assert track.event == "Signed Up" and track.properties["seats"] == 3
    assert track.context.fields["library"].struct_value["name"] == library
    page = by_type[T.EVENT_TYPE_PAGE]
    assert page.name == "Home" and page.properties["category"] == "Docs"
    assert by_type[T.EVENT_TYPE_GROUP].group_id == "acme"
    assert by_type[T.EVENT_TYPE_ALIAS].previous_id == "anon-1"
    # The SDKs stamp sentAt: the event time was corrected for skew, and is close to arrival.
    assert abs(track.timestamp.seconds - track.received_at.seconds) < 5


@pytest.mark.parametrize("gzip", [True, False])
async def test_segment_analytics_python_works_by_changing_the_host(ingestion, create_source, stored, gzip):
    key = await create_source("segment-sdk")
    errors: list[Exception] = []
    client = segment.Client(
        key, host=ingestion.http_url, gzip=gzip, max_retries=2, on_error=lambda error, batch: errors.append(error)
    )
    await asyncio.to_thread(send_everything, client)
    await asyncio.to_thread(client.shutdown)
    assert errors == []
    check_arrived(await stored(), "segment-sdk", "analytics-python")


async def test_rudder_sdk_python_works_by_changing_the_host(ingestion, create_source, stored):
    key = await create_source("rudder-sdk")
    errors: list[Exception] = []
    client = rudder.Client(
        key, host=ingestion.http_url, max_retries=2, on_error=lambda error, batch: errors.append(error)
    )
    await asyncio.to_thread(send_everything, client)
    await asyncio.to_thread(client.shutdown)
    assert errors == []
    events = await stored()
    check_arrived(events, "rudder-sdk", "analytics-python")
    assert all(event.context["channel"] == "server" for _, event in events)


async def test_an_sdk_is_told_no_for_a_wrong_write_key_and_reports_it(ingestion, stored):
    errors: list[Exception] = []
    client = segment.Client(
        "wk_wrong", host=ingestion.http_url, max_retries=0, on_error=lambda error, batch: errors.append(error)
    )
    await asyncio.to_thread(lambda: (client.track("ada", "Clicked"), client.flush()))
    await asyncio.to_thread(client.shutdown)
    assert [getattr(e, "status", None) for e in errors] == [401]
    assert await stored() == []


async def test_an_sdk_that_meets_a_nats_outage_retries_and_nothing_is_lost_or_doubled(
    ingestion, create_source, stored, nats_server
):
    key = await create_source("outage")
    errors: list[Exception] = []
    client = segment.Client(
        key, host=ingestion.http_url, max_retries=10, upload_size=10, on_error=lambda error, batch: errors.append(error)
    )
    nats_server.stop()
    sending = asyncio.create_task(
        asyncio.to_thread(lambda: ([client.track(f"user-{i}", "Clicked", {"i": i}) for i in range(30)], client.flush()))
    )
    await asyncio.sleep(6)  # long enough for at least one 503 and an SDK retry
    nats_server.start()
    await sending
    await asyncio.to_thread(client.shutdown)
    assert errors == []
    events = await stored()
    assert sorted(int(event.properties["i"]) for _, event in events) == list(range(30))
