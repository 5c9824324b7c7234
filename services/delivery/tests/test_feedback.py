"""Outcomes and engagement come back through the real ingestion and identity services as
events of the mosaic-delivery source; an unsubscribe withdraws consent."""

import base64
import json
import socket
from datetime import datetime, timezone

import aiohttp
import grpc
import pytest
from standardwebhooks.webhooks import Webhook

from mosaic.consent.v1 import consent_service_pb2, consent_service_pb2_grpc
from mosaic.delivery.v1 import delivery_pb2
from mosaic.delivery.v1 import delivery_service_pb2 as pb
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from mosaic.ingestion.v1 import ingestion_service_pb2, ingestion_service_pb2_grpc
from mosaic.platform import topics
from mosaic.platform.server import Service
from mosaic.testing.plugin import eventually

SECRET = "whsec_" + base64.b64encode(b"engagement-secret-of-the-test!!!").decode()


@pytest.fixture
async def ingestion_service(make_settings):
    from ingestion_service.app import build
    from ingestion_service.config import Settings

    platform = make_settings("ingestion", MOSAIC_GRACE_SECONDS="1", MOSAIC_PARTITIONS="2")
    settings = Settings.from_env(
        {"MOSAIC_AUTH": "off", "MOSAIC_HTTP_PORT": "0", "MOSAIC_INGEST_OPEN_SOURCES": "true"}, platform
    )
    service = Service(platform, lambda runtime: build(runtime, settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def identity_service(make_settings):
    from identity_service.app import build
    from identity_service.config import Settings

    settings = Settings(make_settings("identity", MOSAIC_GRACE_SECONDS="1", MOSAIC_PARTITIONS="2"), rules_max_age=0.0)
    service = Service(settings.platform, lambda runtime: build(runtime, settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
def engagement_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def with_feedback(ingestion_service, identity_service, delivery_env, engagement_port):
    delivery_env |= {
        "MOSAIC_INGESTION_ADDRESS": f"127.0.0.1:{ingestion_service.port}",
        "MOSAIC_IDENTITY_ADDRESS": f"127.0.0.1:{identity_service.port}",
        "MOSAIC_DELIVERY_ENGAGEMENT_SECRET": SECRET,
        "MOSAIC_DELIVERY_HTTP_PORT": str(engagement_port),
    }


async def person(ingestion_service, identity_service, user_id: str) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingestion_service.port}") as channel:
        await ingestion_service_pb2_grpc.IngestionServiceStub(channel).Ingest(
            ingestion_service_pb2.IngestRequest(
                source_id="web", events=[event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id=user_id)]
            )
        )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_service.port}") as channel:
        identity = identity_service_pb2_grpc.IdentityServiceStub(channel)

        async def lookup():
            try:
                return (
                    await identity.Lookup(
                        identity_service_pb2.LookupRequest(
                            identifier=identity_pb2.Identifier(type="user_id", value=user_id)
                        )
                    )
                ).profile_id
            except grpc.aio.AioRpcError:
                return ""

        return await eventually(lookup)


async def resolved_events(bus, name: str) -> list:
    info = await bus._js.stream_info(topics.EVENTS_RESOLVED.stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        message = resolved_pb2.ResolvedEvent.FromString(
            (await bus._js.get_msg(topics.EVENTS_RESOLVED.stream, seq)).data
        )
        if message.event.event == name:
            found.append(message)
    return found


async def post_engagement(port: int, body: dict, secret: str = SECRET, callback_id: str = "cb-1") -> tuple[int, dict]:
    raw = json.dumps(body)
    now = datetime.now(tz=timezone.utc)
    headers = {
        "webhook-id": callback_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(callback_id, now, raw),
        "Content-Type": "application/json",
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}/v1/engagement", data=raw, headers=headers) as answer:
            return answer.status, await answer.json()


async def test_outcomes_and_engagement_come_back_as_events_and_an_unsubscribe_withdraws_consent(
    with_feedback,
    ingestion_service,
    identity_service,
    consent_service,
    engagement_port,
    stub,
    bus,
    membership,
    consent,
    webhook_receiver,
):
    profile_id = await person(ingestion_service, identity_service, "u-1")
    await stub.CreateDestination(
        pb.CreateDestinationRequest(
            destination=delivery_pb2.Destination(
                destination_id="crm", webhook_url=webhook_receiver.url("/crm"), segment_id="vip", purpose="marketing"
            )
        )
    )
    await consent(profile_id)
    await membership("vip", profile_id)
    request = await eventually(lambda: webhook_receiver.requests and webhook_receiver.requests[0])
    delivery_id = request.body["delivery_id"]

    [sent] = await eventually(lambda: resolved_events(bus, "Delivery Sent"))
    assert sent.profile_id == profile_id and sent.event.source_id == "mosaic-delivery"
    assert sent.event.properties["delivery_id"] == delivery_id

    status, _ = await post_engagement(
        engagement_port,
        {"type": "opened", "delivery_id": delivery_id, "profile_id": profile_id},
        secret="whsec_" + "B" * 43,
    )
    assert status == 401
    status, answer = await post_engagement(
        engagement_port, {"type": "opened", "delivery_id": "nope", "profile_id": profile_id}
    )
    assert status == 404 and "nope" in answer["error"]
    status, answer = await post_engagement(
        engagement_port, {"type": "liked", "delivery_id": delivery_id, "profile_id": profile_id}
    )
    assert status == 400 and answer["error"].startswith("type")

    status, _ = await post_engagement(
        engagement_port,
        {"type": "clicked", "delivery_id": delivery_id, "profile_id": profile_id, "url": "https://example.com/offer"},
        callback_id="cb-2",
    )
    assert status == 202
    status, _ = await post_engagement(
        engagement_port,
        {"type": "unsubscribed", "delivery_id": delivery_id, "profile_id": profile_id},
        callback_id="cb-3",
    )
    assert status == 202
    [clicked] = await eventually(lambda: resolved_events(bus, "Message Clicked"))
    assert clicked.profile_id == profile_id and clicked.event.properties["url"] == "https://example.com/offer"
    await eventually(lambda: resolved_events(bus, "Unsubscribed"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{consent_service.port}") as channel:
        answer = await consent_service_pb2_grpc.ConsentServiceStub(channel).CheckConsent(
            consent_service_pb2.CheckConsentRequest(profile_id=profile_id, purpose="marketing")
        )
    assert not answer.granted
