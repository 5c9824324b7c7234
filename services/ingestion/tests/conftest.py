"""The ingestion service in-process on a real nats-server, and readers of what it stored."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import nats
import pytest
from nats.js import api

from ingestion_service.app import Ingestion, build
from ingestion_service.config import Settings
from mosaic.events.v1 import event_pb2
from mosaic.ingestion.v1 import ingestion_service_pb2 as pb
from mosaic.ingestion.v1 import ingestion_service_pb2_grpc, source_pb2
from mosaic.platform import topics
from mosaic.platform.server import Service
from mosaic.testing.stopping import stop_within


@dataclass
class Running:
    service: Service
    parts: Ingestion
    settings: Settings

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.service.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.parts.http_port}"


@pytest.fixture
async def start_ingestion(make_settings) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Starts an ingestion service with extra environment variables; stops it after the test."""
    started: list[Service] = []

    async def start(**environ: str) -> Running:
        # Most tests send for source ids they never created (`web`): open sources, explicitly.
        environ = {"MOSAIC_HTTP_PORT": "0", "MOSAIC_PARTITIONS": "4", "MOSAIC_INGEST_OPEN_SOURCES": "true", **environ}
        settings = Settings.from_env(environ, make_settings("ingestion", **environ))
        parts: list[Ingestion] = []

        async def build_and_keep(runtime) -> None:
            parts.append(await build(runtime, settings))

        service = Service(settings.platform, build_and_keep)
        await service.start()
        started.append(service)
        return Running(service, parts[0], settings)

    yield start
    for service in reversed(started):
        await stop_within(service)


@pytest.fixture
async def ingestion(start_ingestion) -> Running:
    return await start_ingestion()


@pytest.fixture
async def stub(ingestion):
    async with grpc.aio.insecure_channel(ingestion.grpc_address) as channel:
        yield ingestion_service_pb2_grpc.IngestionServiceStub(channel)


@pytest.fixture
def create_source(stub):
    """Creates a source (`await create_source("web", name=...)`); returns its write key's secret."""

    async def create(source_id: str, **fields) -> str:
        answer = await stub.CreateSource(
            pb.CreateSourceRequest(source=source_pb2.Source(source_id=source_id, **fields))
        )
        return answer.source.write_keys[0].secret

    return create


@pytest.fixture
def stored(nats_server):
    """Reads every message of events.raw (`await stored()`) as (Nats-Msg-Id, Event)."""
    return lambda: stored_events(nats_server.url)


async def stored_events(nats_url: str) -> list[tuple[str, event_pb2.Event]]:
    """Every message of events.raw as (Nats-Msg-Id, Event), in stream order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(topics.EVENTS_RAW.stream)
        found: list[tuple[str, event_pb2.Event]] = []
        if info.state.messages == 0:
            return found
        sub = await js.pull_subscribe(
            topics.EVENTS_RAW.wildcard,
            stream=topics.EVENTS_RAW.stream,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL, inactive_threshold=30.0
            ),
        )
        while len(found) < info.state.messages:
            for msg in await sub.fetch(1000, timeout=5):
                assert msg.headers is not None  # published with a message id
                found.append((msg.headers["Nats-Msg-Id"], event_pb2.Event.FromString(msg.data)))
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()
