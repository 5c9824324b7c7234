"""The gRPC API in-process, on a real nats-server: results, errors, streams and durability."""

import asyncio
import re

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc, source_pb2
from mosaic.platform import topics


def track(message_id="", **fields) -> event_pb2.Event:
    return event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, message_id=message_id, **fields)


def detail(error: grpc.aio.AioRpcError, kind):
    found = kind()
    rpc_status.from_call(error).details[0].Unpack(found)
    return found


async def test_each_event_gets_its_own_result_in_order(stub, ingestion):
    answer = await stub.Ingest(
        pb.IngestRequest(
            source_id="web",
            events=[
                track("m1", user_id="u", event="Clicked"),
                track("m2", user_id="u"),
                track("m1", user_id="u", event="Clicked"),
            ],
        )
    )
    assert [r.status for r in answer.results] == [
        pb.EVENT_STATUS_ACCEPTED,
        pb.EVENT_STATUS_REJECTED,
        pb.EVENT_STATUS_DUPLICATE,
    ]
    assert answer.results[1].field == "events[1].event" and answer.results[1].reason == "is required for track"
    info = await ingestion.service.runtime.bus._js.stream_info(topics.EVENTS_RAW.stream)
    assert info.state.messages == 1


async def test_a_missing_source_is_invalid_argument_naming_the_field(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Ingest(pb.IngestRequest(events=[track(user_id="u", event="Clicked")]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = detail(caught.value, error_details_pb2.BadRequest)
    assert bad_request.field_violations[0].field == "source_id"
    assert bad_request.field_violations[0].description == "is required"


async def test_an_oversized_batch_is_refused_whole(stub):
    events = [track(user_id="u", event="Clicked")] * 2501
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Ingest(pb.IngestRequest(source_id="web", events=events))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 2500" in caught.value.details()


async def test_without_nats_the_answer_is_unavailable_with_a_retry_hint(stub, nats_server):
    nats_server.stop()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Ingest(
            pb.IngestRequest(source_id="web", events=[track("m9", user_id="u", event="Clicked")]), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert detail(caught.value, error_details_pb2.RetryInfo).retry_delay.seconds >= 1
    nats_server.start()


async def test_a_stream_of_batches_is_summed_up_with_the_problems_by_index(stub, stored):
    async def batches():
        yield pb.IngestStreamRequest(
            source_id="app", events=[track(f"s{i}", user_id="u", event="E") for i in range(300)]
        )
        for start in (300, 600):
            events = [track(f"s{i}", user_id="u", event="E") for i in range(start, start + 300)]
            events[7] = track(anonymous_id="a")  # no event name
            yield pb.IngestStreamRequest(events=events)
        yield pb.IngestStreamRequest(events=[track("s0", user_id="u", event="E")])

    answer = await stub.IngestStream(batches())
    assert (answer.accepted, answer.duplicate, answer.rejected) == (898, 1, 2)
    assert [(p.index, p.field, p.reason) for p in answer.problems] == [
        (307, "events[7].event", "is required for track"),
        (607, "events[7].event", "is required for track"),
    ]
    assert len(await stored()) == 898


async def test_a_stream_may_not_change_source(stub):
    async def batches():
        yield pb.IngestStreamRequest(source_id="app", events=[track(user_id="u", event="E")])
        yield pb.IngestStreamRequest(source_id="web", events=[track(user_id="u", event="E")])

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IngestStream(batches())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "source_id: must be the same on every message of a stream"


async def test_sources_are_created_once_read_listed_and_updated_by_mask(stub, create_source):
    await create_source("shop", name="Shop")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_source("shop")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    got = (await stub.GetSource(pb.GetSourceRequest(source_id="shop"))).source
    assert got.name == "Shop" and not got.disabled and len(got.write_keys) == 1
    assert got.write_keys[0].secret == "" and got.write_keys[0].key_id.startswith("wk_")
    updated = (
        await stub.UpdateSource(
            pb.UpdateSourceRequest(
                source=source_pb2.Source(source_id="shop", name="ignored", disabled=True),
                update_mask={"paths": ["disabled"]},
            )
        )
    ).source
    assert updated.disabled and updated.name == "Shop"
    assert [s.source_id for s in (await stub.ListSources(pb.ListSourcesRequest())).sources] == ["shop"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetSource(pb.GetSourceRequest(source_id="nowhere"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("source", "field", "rule"),
    [
        (source_pb2.Source(source_id="Bad Id"), "source.source_id", "must be 1-64 lower-case letters"),
        (
            source_pb2.Source(source_id="ok", transforms=[source_pb2.Transform()]),
            "source.transforms[0]",
            "must have an action",
        ),
        (
            source_pb2.Source(
                source_id="ok", transforms=[source_pb2.Transform(drop_field=source_pb2.DropField(path="ip"))]
            ),
            "source.transforms[0].drop_field.path",
            "must be a dotted path",
        ),
        (
            source_pb2.Source(
                source_id="ok",
                transforms=[
                    source_pb2.Transform(
                        normalise_phone=source_pb2.NormalisePhone(path="traits.phone", default_region="XX")
                    )
                ],
            ),
            "source.transforms[0].normalise_phone.default_region",
            "must be an ISO 3166 region",
        ),
    ],
)
async def test_a_source_that_breaks_a_rule_is_refused_naming_the_field(stub, source, field, rule):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSource(pb.CreateSourceRequest(source=source))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = detail(caught.value, error_details_pb2.BadRequest).field_violations[0]
    assert violation.field == field and violation.description.startswith(rule)


async def test_a_tracking_plan_that_is_not_json_schema_is_refused(stub):
    source = source_pb2.Source(source_id="shop")
    source.tracking_plan.events["Bought"].update({"type": "object", "properties": {"price": {"type": "money"}}})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSource(pb.CreateSourceRequest(source=source))
    violation = detail(caught.value, error_details_pb2.BadRequest).field_violations[0]
    assert violation.field == "source.tracking_plan.events['Bought']"
    assert violation.description.startswith("is not valid JSON Schema: 'money' is not valid")


async def test_a_disabled_or_unknown_source_may_not_send(start_ingestion, nats_server):
    closed = await start_ingestion(MOSAIC_INGEST_OPEN_SOURCES="false")
    async with grpc.aio.insecure_channel(closed.grpc_address) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Ingest(pb.IngestRequest(source_id="web", events=[track(user_id="u", event="E")]))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        await stub.CreateSource(pb.CreateSourceRequest(source=source_pb2.Source(source_id="web", disabled=True)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Ingest(pb.IngestRequest(source_id="web", events=[track(user_id="u", event="E")]))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.details() == "source web: is disabled"


async def test_over_the_rate_limit_the_answer_is_resource_exhausted_with_a_retry_hint(stub, create_source):
    await create_source("slow", rate_limit=source_pb2.RateLimit(events_per_second=2, burst=2))
    await stub.Ingest(pb.IngestRequest(source_id="slow", events=[track(user_id="u", event="E")] * 2))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Ingest(pb.IngestRequest(source_id="slow", events=[track(user_id="u", event="E")]))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = detail(caught.value, error_details_pb2.RetryInfo).retry_delay
    assert 0 < retry.seconds + retry.nanos / 1e9 <= 0.5


async def test_the_default_rate_limit_holds_each_open_source_id_to_its_own_bucket(start_ingestion, nats_server):
    running = await start_ingestion(
        MOSAIC_INGEST_OPEN_SOURCES="true", MOSAIC_INGEST_RATE_LIMIT="2", MOSAIC_INGEST_RATE_BURST="2"
    )
    async with grpc.aio.insecure_channel(running.grpc_address) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        send = lambda source_id: stub.Ingest(
            pb.IngestRequest(source_id=source_id, events=[track(user_id="u", event="E")] * 2)
        )
        await send("never-created")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await send("never-created")
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The bucket refills while the machine is slow: the hint is at most one event's worth (0.5 s).
        hint = re.fullmatch(
            r"source 'never-created' is over its rate limit; retry in (\d\.\d)s", caught.value.details()
        )
        assert hint and float(hint[1]) <= 0.5, caught.value.details()
        retry = detail(caught.value, error_details_pb2.RetryInfo).retry_delay
        assert 0 < retry.seconds + retry.nanos / 1e9 <= 0.5
        assert all(r.status == pb.EVENT_STATUS_ACCEPTED for r in (await send("another-one")).results)


async def test_a_stream_from_an_open_source_over_the_default_limit_is_slowed_not_failed(start_ingestion, stored):
    running = await start_ingestion(
        MOSAIC_INGEST_OPEN_SOURCES="true", MOSAIC_INGEST_RATE_LIMIT="200", MOSAIC_INGEST_RATE_BURST="100"
    )

    async def batches():
        for start in (0, 100, 200):
            yield pb.IngestStreamRequest(
                source_id="open-stream",
                events=[track(f"s{i}", user_id="u", event="E") for i in range(start, start + 100)],
            )

    async with grpc.aio.insecure_channel(running.grpc_address) as channel:
        started = asyncio.get_running_loop().time()
        answer = await ingestion_service_pb2_grpc.IngestionServiceStub(channel).IngestStream(batches())
        elapsed = asyncio.get_running_loop().time() - started
    assert answer.accepted == 300 and len(await stored()) == 300
    # The burst takes the first 100, the next goes in on the first new token, and its debt of
    # 99 holds the third back for half a second (see ratelimit.py).
    assert elapsed >= 0.45


async def test_the_dedupe_window_is_configurable(start_ingestion, nats_server):
    running = await start_ingestion(MOSAIC_EVENTS_DEDUP_WINDOW_SECONDS="1")
    info = await running.service.runtime.bus._js.stream_info(topics.EVENTS_RAW.stream)
    assert info.config.duplicate_window == 1.0
    async with grpc.aio.insecure_channel(running.grpc_address) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        send = lambda: stub.Ingest(pb.IngestRequest(source_id="web", events=[track("same", user_id="u", event="E")]))
        assert (await send()).results[0].status == pb.EVENT_STATUS_ACCEPTED
        assert (await send()).results[0].status == pb.EVENT_STATUS_DUPLICATE
        await asyncio.sleep(1.5)
        assert (await send()).results[0].status == pb.EVENT_STATUS_ACCEPTED  # the window is over
