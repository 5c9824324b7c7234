"""Backpressure on a real nats-server: past the configured backlog of a consuming service,
senders are told to come back later (HTTP 503 + Retry-After, gRPC UNAVAILABLE + RetryInfo);
once the consumer catches up, events are accepted again."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import grpc
import nats
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.js import api

from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc, source_pb2
from mosaic.platform import topics
from mosaic.testing.plugin import eventually


async def test_past_the_backlog_senders_are_told_to_retry_and_nothing_is_stored(start_ingestion, nats_server, stored):
    ingestion = await start_ingestion(
        MOSAIC_INGEST_MAX_BACKLOG="5",
        MOSAIC_INGEST_BACKLOG_REFRESH_SECONDS="0.1",
        MOSAIC_INGEST_BACKLOG_RETRY_AFTER_SECONDS="7",
    )
    # A consuming service that has stopped acking: a real durable consumer on partition 0.
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    slow = await js.pull_subscribe(
        topics.EVENTS_RAW.partition_subjects(0),
        durable="identity-0",
        stream=topics.EVENTS_RAW.stream,
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT),
    )
    key = await _source(ingestion)
    async with aiohttp.ClientSession(base_url=ingestion.http_url, headers={"Authorization": key}) as http:

        async def post(n: int) -> aiohttp.ClientResponse:
            body = {"batch": [{"type": "track", "userId": f"u{n}-{i}", "event": "Clicked"} for i in range(8)]}
            async with http.post("/v1/batch", data=json.dumps(body)) as response:
                await response.read()
                return response

        async def refused() -> aiohttp.ClientResponse | None:
            response = await post(1)
            return response if response.status == 503 else None

        assert (await post(0)).status == 200  # under the limit
        answer = await eventually(refused)  # then over it, once the gauge has read the consumer
        assert answer.headers["Retry-After"] == "7"
        before = len(await stored())
        async with grpc.aio.insecure_channel(ingestion.grpc_address) as channel:
            stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
            event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id="ada")
            try:
                await stub.Ingest(pb.IngestRequest(source_id="web", events=[event]))
                raise AssertionError("accepted past the backlog")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE and "identity on events.raw is" in error.details()
                retry = error_details_pb2.RetryInfo()
                assert rpc_status.from_call(error).details[0].Unpack(retry) and retry.retry_delay.seconds == 7
        assert len(await stored()) == before  # refused means not stored

        # The consumer catches up: accepted again.
        while True:
            try:
                messages = await slow.fetch(100, timeout=1)
            except asyncio.TimeoutError:  # nats-py raises its own kind or asyncio's
                break
            for message in messages:
                await message.ack()

        async def accepted() -> bool:
            return (await post(2)).status == 200

        await eventually(accepted)
    await nc.close()


async def _source(ingestion) -> str:
    async with grpc.aio.insecure_channel(ingestion.grpc_address) as channel:
        stub = ingestion_service_pb2_grpc.IngestionServiceStub(channel)
        answer = await stub.CreateSource(pb.CreateSourceRequest(source=source_pb2.Source(source_id="web")))
    return "Basic " + base64.b64encode(f"{answer.source.write_keys[0].secret}:".encode()).decode()


async def test_a_reader_that_is_not_a_stage_never_holds_senders_back(start_ingestion, nats_server):
    ingestion = await start_ingestion(MOSAIC_INGEST_MAX_BACKLOG="5", MOSAIC_INGEST_BACKLOG_REFRESH_SECONDS="0.1")
    nc = await nats.connect(nats_server.url)
    # An ephemeral consumer (a debugging tool, a test's reader) that never acks: not a stage.
    await nc.jetstream().pull_subscribe(
        topics.EVENTS_RAW.wildcard,
        stream=topics.EVENTS_RAW.stream,
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT),
    )
    key = await _source(ingestion)
    async with aiohttp.ClientSession(base_url=ingestion.http_url, headers={"Authorization": key}) as http:
        for n in range(4):
            body = {"batch": [{"type": "track", "userId": f"u{n}-{i}", "event": "Clicked"} for i in range(8)]}
            async with http.post("/v1/batch", data=json.dumps(body)) as response:
                assert response.status == 200, await response.text()
            await asyncio.sleep(0.3)  # the gauge reads the consumers meanwhile
    await nc.close()
