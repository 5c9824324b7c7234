"""Services of the mesh in-process on this test's real nats-server (embedded store), for the
tests that cross services: the fuzz test of both doors and the input-bounds walk."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest

from mosaic.platform import topics
from mosaic.platform.server import Service
from mosaic.testing.nats_server import NatsServer
from mosaic.testing.stopping import stop_within

PARTITIONS = 2


@dataclass
class Started:
    nats_url: str
    services: dict[str, Service] = field(default_factory=dict)
    built: dict[str, Any] = field(default_factory=dict)  # what each build returned (ingestion's parts)
    _nc: nats.NATS | None = None

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.services[name].port}"

    async def backlog(self, consumers: dict[topics.Topic, str]) -> int:
        """Messages of each topic not yet acked by its service's consumers, over the partitions."""
        js = (await self._connection()).jetstream()
        left = 0
        for topic, service in consumers.items():
            for partition in range(PARTITIONS):
                durable = f"{service}-{partition}"
                try:
                    info = await js.consumer_info(topic.stream, durable)
                except nats.js.errors.NotFoundError:
                    # Created when its partition is first leased: until then, not drained.
                    raise AssertionError(f"{durable} on {topic.stream} not created yet") from None
                left += info.num_pending + info.num_ack_pending
        return left

    async def dead_letters(self) -> int:
        info = await (await self._connection()).jetstream().stream_info(topics.DEAD_LETTER_STREAM)
        return info.state.messages

    async def _connection(self) -> nats.NATS:
        if self._nc is None:
            self._nc = await nats.connect(self.nats_url)
        return self._nc

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()


@pytest.fixture
async def start_services(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Started]]]:
    """`await start_services("ingestion", "identity", ...)`: each built by its own `app.build`
    from its own `config.Settings`, in the order given (consent before delivery)."""
    started = Started(nats_server.url)

    async def start(*names: str, **environ: str) -> Started:
        for name in names:
            env = {
                "MOSAIC_AUTH": "off",
                "MOSAIC_NATS_URL": nats_server.url,
                "MOSAIC_DATA_DIR": str(tmp_path / "data"),
                "MOSAIC_PARTITIONS": str(PARTITIONS),
                "MOSAIC_GRPC_PORT": "0",
                "MOSAIC_HTTP_PORT": "0",
                "MOSAIC_GRACE_SECONDS": "1",
                "MOSAIC_INGEST_OPEN_SOURCES": "true",
                **environ,
            }
            if name == "delivery" and "consent" in started.services:
                env.setdefault("MOSAIC_CONSENT_ADDRESS", started.address("consent"))
            config = importlib.import_module(f"{name}_service.config")
            app = importlib.import_module(f"{name}_service.app")
            settings = config.Settings.from_env(env)

            async def build(runtime, app=app, settings=settings, name=name) -> None:
                started.built[name] = await app.build(runtime, settings)

            service = Service(settings.platform, build)
            await service.start()
            started.services[name] = service
        return started

    yield start
    await started.close()
    for service in reversed(list(started.services.values())):
        await stop_within(service)
