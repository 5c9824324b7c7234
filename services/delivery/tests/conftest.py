"""The delivery service in-process on a real nats-server, beside the real consent service."""

from __future__ import annotations

import grpc
import pytest

from consent_service.app import build as build_consent
from consent_service.config import Settings as ConsentSettings
from delivery_service.app import build
from delivery_service.config import Settings
from mosaic.consent.v1 import consent_pb2, consent_service_pb2, consent_service_pb2_grpc
from mosaic.delivery.v1 import delivery_service_pb2_grpc
from mosaic.events.v1 import segment_membership_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.server import Service


@pytest.fixture
async def consent_service(make_settings):
    settings = ConsentSettings(make_settings("consent", MOSAIC_GRACE_SECONDS="1", MOSAIC_PARTITIONS="2"))
    service = Service(settings.platform, lambda runtime: build_consent(runtime, settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
def delivery_env(consent_service, make_settings):
    """The delivery service's environment; a test may change it before `service` starts."""
    return {
        "MOSAIC_GRACE_SECONDS": "1",
        "MOSAIC_PARTITIONS": "2",
        "MOSAIC_CONSENT_ADDRESS": f"127.0.0.1:{consent_service.port}",
        "MOSAIC_DELIVERY_ALLOW_ADDRESSES": "loopback",
        "MOSAIC_DELIVERY_MAX_ATTEMPTS": "3",
        "MOSAIC_WEBHOOK_TIMEOUT_SECONDS": "1",
        "MOSAIC_DELIVERY_BREAKER_COOLDOWN_SECONDS": "0.2",
    }


@pytest.fixture
async def service(delivery_env, make_settings, tmp_path, nats_server):
    environ = {
        "MOSAIC_NATS_URL": nats_server.url,
        "MOSAIC_DATA_DIR": str(tmp_path / "data"),
        "MOSAIC_AUTH": "off",
        **delivery_env,
    }
    settings = Settings.from_env(environ)
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def stub(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield delivery_service_pb2_grpc.DeliveryServiceStub(channel)


@pytest.fixture
async def consent(consent_service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{consent_service.port}") as channel:
        stub = consent_service_pb2_grpc.ConsentServiceStub(channel)

        async def grant(profile_id: str, purpose: str = "marketing", granted: bool = True) -> None:
            await stub.SetConsent(
                consent_service_pb2.SetConsentRequest(
                    decision=consent_pb2.ConsentDecision(profile_id=profile_id, purpose=purpose, granted=granted)
                )
            )

        yield grant


@pytest.fixture
async def bus(service):
    bus = await Bus.connect(service.settings.nats_url, "test", service.settings.partitions)
    yield bus
    await bus.close()


@pytest.fixture
def membership(bus):
    """Publish a membership change, as segmentation does."""
    return lambda *args, **kwargs: _membership(bus, *args, **kwargs)


async def _membership(
    bus: Bus, segment_id: str, profile_id: str, version: int = 1, exited: bool = False, message_id: str = ""
) -> None:
    change = segment_membership_pb2.SegmentMembershipChanged(
        segment_id=segment_id,
        profile_id=profile_id,
        profile_version=version,
        change=segment_membership_pb2.MEMBERSHIP_CHANGE_EXITED
        if exited
        else segment_membership_pb2.MEMBERSHIP_CHANGE_ENTERED,
    )
    await bus.publish(
        topics.SEGMENT_MEMBERSHIP, profile_id, change, message_id or f"{segment_id}:{profile_id}:{version}:{exited}"
    )


@pytest.fixture
async def profile_service(make_settings):
    """The real profile service, which templates read traits from."""
    from profile_service.app import build as build_profile
    from profile_service.config import Settings as ProfileSettings

    settings = ProfileSettings.from_env(
        {
            "MOSAIC_AUTH": "off",
            "MOSAIC_NATS_URL": make_settings("profile").nats_url,
            "MOSAIC_DATA_DIR": str(make_settings("profile").data_dir),
            "MOSAIC_GRACE_SECONDS": "1",
            "MOSAIC_PARTITIONS": "2",
        }
    )
    service = Service(settings.platform, lambda runtime: build_profile(runtime, settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
def with_profiles(profile_service, delivery_env):
    delivery_env["MOSAIC_PROFILE_ADDRESS"] = f"127.0.0.1:{profile_service.port}"
