"""A demo data set: a segment, a webhook destination, a few people, consent and an upgrade."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import urllib.request

import grpc
from google.protobuf import struct_pb2

from mosaic.cli import connect
from mosaic.cli.backlog import Waiter
from mosaic.cli.mesh import Mesh
from mosaic.consent.v1 import consent_pb2, consent_service_pb2, consent_service_pb2_grpc
from mosaic.delivery.v1 import delivery_pb2, delivery_service_pb2, delivery_service_pb2_grpc
from mosaic.events.v1 import event_pb2
from mosaic.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from mosaic.ingestion.v1 import ingestion_service_pb2, ingestion_service_pb2_grpc, source_pb2
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2, segmentation_service_pb2_grpc

PEOPLE = [
    ("ada", "ada@example.com", True),
    ("grace", "grace@example.com", True),
    ("linus", "linus@example.com", False),
    ("barbara", "barbara@example.com", True),
    ("ken", "ken@example.com", False),
]


def _identify(user_id: str, **traits) -> event_pb2.Event:
    # No message id: ingestion makes a fresh one, so each run of the demo sends new events
    # (a fixed id would be dropped as a duplicate for the 24 hours of the dedupe window).
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_IDENTIFY, user_id=user_id)
    event.traits.update(traits)
    return event


async def _ignore_exists(call) -> None:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise


async def _demo_write_key(ingestion) -> str:
    """A write key of the `demo` source: issued when it is created, rotated on later runs."""
    try:
        created = await ingestion.CreateSource(
            ingestion_service_pb2.CreateSourceRequest(source=source_pb2.Source(source_id="demo", name="Demo data"))
        )
        return created.source.write_keys[0].secret
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    rotated = await ingestion.RotateWriteKey(ingestion_service_pb2.RotateWriteKeyRequest(source_id="demo"))
    return rotated.write_key.secret


def _post(url: str, body: dict, write_key: str) -> None:
    token = base64.b64encode(f"{write_key}:".encode()).decode()
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        if answer.status != 200:
            raise RuntimeError(f"{url} answered {answer.status}")


async def run_demo(mesh: Mesh, webhook_url: str) -> tuple[list[tuple[str, str, str]], str]:
    """Seed the mesh; returns (user, profile id, delivery status) per person, and the demo
    source's write key. Raises DemoStalled when the mesh stops making progress towards it."""
    waiter = Waiter(mesh.env["MOSAIC_NATS_URL"])
    channels = {name: connect.channel(mesh.address(name)) for name in mesh.ports}
    ingestion = ingestion_service_pb2_grpc.IngestionServiceStub(channels["ingestion"])
    identity = identity_service_pb2_grpc.IdentityServiceStub(channels["identity"])
    segmentation = segmentation_service_pb2_grpc.SegmentationServiceStub(channels["segmentation"])
    consent = consent_service_pb2_grpc.ConsentServiceStub(channels["consent"])
    delivery = delivery_service_pb2_grpc.DeliveryServiceStub(channels["delivery"])
    try:
        await _ignore_exists(
            segmentation.CreateSegment(
                segmentation_service_pb2.CreateSegmentRequest(
                    segment=segment_pb2.Segment(
                        segment_id="enterprise",
                        name="Enterprise customers",
                        condition=segment_pb2.Condition(
                            trait=segment_pb2.TraitCondition(
                                trait="plan",
                                operator=segment_pb2.OPERATOR_EQUALS,
                                value=struct_pb2.Value(string_value="enterprise"),
                            )
                        ),
                    )
                )
            )
        )
        await _ignore_exists(
            delivery.CreateDestination(
                delivery_service_pb2.CreateDestinationRequest(
                    destination=delivery_pb2.Destination(
                        destination_id="demo-webhook",
                        name="Demo webhook",
                        webhook_url=webhook_url,
                        segment_id="enterprise",
                        purpose="marketing",
                    )
                )
            )
        )
        write_key = await _demo_write_key(ingestion)
        # The sign-ups come the way an SDK sends them: Segment's HTTP batch API.
        batch = {
            "batch": [
                {"type": "identify", "userId": user, "traits": {"email": email, "plan": "free"}}
                for user, email, _ in PEOPLE
            ]
        }
        await asyncio.to_thread(_post, f"http://127.0.0.1:{mesh.http_ports['ingestion']}/v1/batch", batch, write_key)
        profiles = {}
        for user, _, consents in PEOPLE:
            identifier = identity_pb2.Identifier(type="user_id", value=user)
            answer = await waiter.until(
                f"identity to resolve {user}",
                functools.partial(identity.Lookup, identity_service_pb2.LookupRequest(identifier=identifier)),
            )
            profiles[user] = answer.profile_id
            await consent.SetConsent(
                consent_service_pb2.SetConsentRequest(
                    decision=consent_pb2.ConsentDecision(
                        profile_id=answer.profile_id, purpose="marketing", granted=consents, source="demo"
                    )
                )
            )

        async def deliveries(profile_id):
            answer = await delivery.ListDeliveries(delivery_service_pb2.ListDeliveriesRequest(profile_id=profile_id))
            return list(answer.deliveries)

        before = {user: len(await deliveries(pid)) for user, pid in profiles.items()}
        upgrades = [_identify(user, plan="enterprise") for user, _, _ in PEOPLE]
        await ingestion.Ingest(ingestion_service_pb2.IngestRequest(source_id="demo", events=upgrades))
        results = []
        for user, profile_id in profiles.items():

            async def new_delivery(pid=profile_id, known=before[user]):
                records = await deliveries(pid)
                latest = len(records) > known and max(records, key=lambda r: r.updated_at.ToNanoseconds())
                # Queued is not an outcome yet: wait for its worker to send it.
                return latest and latest.status != delivery_pb2.DELIVERY_STATUS_QUEUED and latest

            record = await waiter.until(f"the webhook delivery for {user}", new_delivery)
            results.append((user, profile_id, delivery_pb2.DeliveryStatus.Name(record.status)))
        return results, write_key
    finally:
        for channel in channels.values():
            await channel.close()
