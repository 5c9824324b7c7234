"""The delivery service in-process on a real nats-server, beside the real consent service (and
the real profile and segmentation services where a test needs traits or segment members)."""

from __future__ import annotations

import grpc
import pytest

from consent_service.app import build as build_consent
from consent_service.config import Settings as ConsentSettings
from delivery_service.app import build
from delivery_service.config import Settings
from mosaic.consent.v1 import consent_pb2, consent_service_pb2, consent_service_pb2_grpc
from mosaic.delivery.v1 import delivery_service_pb2_grpc
from mosaic.events.v1 import event_pb2, resolved_pb2, segment_membership_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.server import Service
from mosaic.profile.v1 import profile_service_pb2, profile_service_pb2_grpc
from mosaic.segmentation.v1 import segmentation_service_pb2_grpc
from mosaic.testing.plugin import eventually
from mosaic.testing.stopping import stop_within


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
def delivery_environ(delivery_env, tmp_path, nats_server):
    """The whole environment of the delivery service (and of more replicas of it)."""
    return lambda: {
        "MOSAIC_NATS_URL": nats_server.url,
        "MOSAIC_DATA_DIR": str(tmp_path / "data"),
        "MOSAIC_AUTH": "off",
        **delivery_env,
    }


@pytest.fixture
async def service(delivery_environ):
    settings = Settings.from_env(delivery_environ())
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    yield service
    await service.stop()


class Replicas:
    """Delivery replicas on one store and nats-server (the `service` fixture's, when both run)."""

    def __init__(self, environ) -> None:
        self.environ = environ
        self.running: list[Service] = []

    async def start(self) -> Service:
        settings = Settings.from_env(self.environ())
        replica = Service(settings.platform, lambda runtime: build(runtime, settings))
        await replica.start()
        self.running.append(replica)
        return replica

    async def stop(self, replica: Service) -> None:
        self.running.remove(replica)
        await stop_within(replica)


@pytest.fixture
async def replicas(delivery_environ):
    """Delivery replicas started and stopped by the test, on one store and nats-server."""
    started = Replicas(delivery_environ)
    yield started
    for replica in list(started.running):
        await started.stop(replica)


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


@pytest.fixture
async def segmentation_service(make_settings):
    """The real segmentation service, whose ListMembers campaigns read their audience from."""
    from segmentation_service.app import build as build_segmentation
    from segmentation_service.config import Settings as SegmentationSettings

    base = make_settings("segmentation")
    settings = SegmentationSettings.from_env(
        {
            "MOSAIC_AUTH": "off",
            "MOSAIC_NATS_URL": base.nats_url,
            "MOSAIC_DATA_DIR": str(base.data_dir),
            "MOSAIC_GRACE_SECONDS": "1",
            "MOSAIC_PARTITIONS": "2",
        }
    )
    service = Service(settings.platform, lambda runtime: build_segmentation(runtime, settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
def with_segments(segmentation_service, delivery_env):
    delivery_env["MOSAIC_SEGMENTATION_ADDRESS"] = f"127.0.0.1:{segmentation_service.port}"
    delivery_env["MOSAIC_DELIVERY_CAMPAIGN_SECONDS"] = "0.2"


@pytest.fixture
async def segments(segmentation_service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{segmentation_service.port}") as channel:
        yield segmentation_service_pb2_grpc.SegmentationServiceStub(channel)


@pytest.fixture
def set_traits(bus, profile_service):
    """Give a person traits, as identity publishes them; returns once the profile has them."""
    return lambda profile_id, **traits: _set_traits(bus, profile_service, profile_id, **traits)


async def _set_traits(bus, profile_service, profile_id, **traits):
    """Traits arrive as identity publishes them: an identify event on events.resolved."""
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, message_id=f"t-{profile_id}", source_id="web")
    event.traits.update(traits)
    event.timestamp.GetCurrentTime()
    await bus.publish(
        topics.EVENTS_RESOLVED,
        profile_id,
        resolved_pb2.ResolvedEvent(profile_id=profile_id, event=event),
        event.message_id,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{profile_service.port}") as channel:
        profiles = profile_service_pb2_grpc.ProfileServiceStub(channel)

        async def known():
            try:
                answer = await profiles.GetProfile(profile_service_pb2.GetProfileRequest(profile_id=profile_id))
            except grpc.aio.AioRpcError:
                return False
            return set(traits) <= set(answer.profile.traits)

        await eventually(known)
