"""Fixtures of the consent tests."""

import grpc
import pytest

from consent_service.app import build
from consent_service.config import Settings
from consent_service.store import open_store
from mosaic.consent.v1 import consent_service_pb2_grpc
from mosaic.platform.server import Service


@pytest.fixture
async def store(store_settings):
    """A consent store on each backend (see mosaic.testing's store_settings)."""
    store = await open_store(store_settings)
    yield store
    await store.close()


@pytest.fixture
def start_consent(make_settings):
    """Starts a consent service in-process on the test's nats-server and store, with MOSAIC_*
    settings given as keywords over the tests' own; the caller stops it."""

    async def start(**environ: str) -> Service:
        base = make_settings("consent")
        settings = Settings.from_env(
            {
                "MOSAIC_AUTH": "off",
                "MOSAIC_NATS_URL": base.nats_url,
                "MOSAIC_DATA_DIR": str(base.data_dir),
                "MOSAIC_GRACE_SECONDS": "1",
                "MOSAIC_PARTITIONS": "4",
                **environ,
            }
        )
        service = Service(settings.platform, lambda runtime: build(runtime, settings))
        await service.start()
        return service

    return start


@pytest.fixture
async def service(start_consent):
    service = await start_consent()
    yield service
    await service.stop()


@pytest.fixture
async def stub(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield consent_service_pb2_grpc.ConsentServiceStub(channel)
