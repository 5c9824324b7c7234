"""The ingestion service in-process, on a real nats-server: results, errors and durability."""

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb, ingestion_service_pb2_grpc
from mosaic.platform import topics
from mosaic.platform.server import Service
from ingestion_service.app import build
from ingestion_service.config import Settings


@pytest.fixture
async def service(make_settings):
    settings = Settings(make_settings("ingestion"))
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def stub(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield ingestion_service_pb2_grpc.IngestionServiceStub(channel)


def track(message_id="", **fields) -> event_pb2.Event:
    return event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, message_id=message_id, **fields)


async def test_each_event_gets_its_own_result_in_order(stub, service):
    answer = await stub.Ingest(pb.IngestRequest(source_id="web", events=[
        track("m1", user_id="u", event="Clicked"),
        track("m2", user_id="u"),
        track("m1", user_id="u", event="Clicked"),
    ]))
    assert [r.status for r in answer.results] == [pb.EVENT_STATUS_ACCEPTED, pb.EVENT_STATUS_REJECTED, pb.EVENT_STATUS_DUPLICATE]
    assert answer.results[1].field == "events[1].event" and answer.results[1].reason == "is required for track"
    info = await service.runtime.bus._js.stream_info(topics.EVENTS_RAW.stream)
    assert info.state.messages == 1


async def test_a_missing_source_is_invalid_argument_naming_the_field(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Ingest(pb.IngestRequest(events=[track(user_id="u", event="Clicked")]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    bad_request = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad_request)
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
        await stub.Ingest(pb.IngestRequest(source_id="web", events=[track("m9", user_id="u", event="Clicked")]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    retry = error_details_pb2.RetryInfo()
    rpc_status.from_call(caught.value).details[0].Unpack(retry)
    assert retry.retry_delay.seconds >= 1
    nats_server.start()
