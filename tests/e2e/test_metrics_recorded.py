"""Every metric of the registry is recorded by the code path where its event happens: the six
services in-process on a real nats-server, one small real flow through them (an anonymous visit
that becomes a known customer, a merge, a segment entered, a webhook delivered to a real local
receiver after a consent check, a poison message dead-lettered), then each registered metric
has data points, those recorded (counters, histograms) with non-zero values, and the real
Prometheus endpoint serves them."""

from __future__ import annotations

import grpc
import nats
from google.protobuf import struct_pb2

from mosaic.consent.v1 import consent_pb2, consent_service_pb2, consent_service_pb2_grpc
from mosaic.delivery.v1 import delivery_pb2, delivery_service_pb2, delivery_service_pb2_grpc
from mosaic.events.v1 import event_pb2
from mosaic.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from mosaic.ingestion.v1 import ingestion_service_pb2, ingestion_service_pb2_grpc
from mosaic.platform import metrics, topics
from mosaic.platform.consumer_lag import ConsumerLag
from mosaic.segmentation.v1 import segment_pb2, segmentation_service_pb2, segmentation_service_pb2_grpc
from mosaic.testing.plugin import eventually

PARTITIONS = 2  # the start_services fixture's


def _event(kind: event_pb2.EventType, **fields) -> event_pb2.Event:
    traits = fields.pop("traits", {})
    event = event_pb2.Event(type=kind, **fields)
    event.traits.update(traits)
    return event


def _total(points) -> float:
    return sum(getattr(p, "value", 0) or getattr(p, "sum", 0) for p in points)


async def test_every_registered_metric_is_recorded_by_a_real_flow(recorded_metrics, start_services, webhook_receiver):
    mesh = await start_services(
        "consent",
        "ingestion",
        "identity",
        "profile",
        "segmentation",
        "delivery",
        MOSAIC_DELIVERY_ALLOW_ADDRESSES="loopback",
    )
    channels = {name: grpc.aio.insecure_channel(mesh.address(name)) for name in mesh.services}
    ingestion = ingestion_service_pb2_grpc.IngestionServiceStub(channels["ingestion"])
    identity = identity_service_pb2_grpc.IdentityServiceStub(channels["identity"])
    try:
        await segmentation_service_pb2_grpc.SegmentationServiceStub(channels["segmentation"]).CreateSegment(
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
        await delivery_service_pb2_grpc.DeliveryServiceStub(channels["delivery"]).CreateDestination(
            delivery_service_pb2.CreateDestinationRequest(
                destination=delivery_pb2.Destination(
                    destination_id="hook",
                    name="Hook",
                    webhook_url=webhook_receiver.url(),
                    segment_id="enterprise",
                    purpose="marketing",
                )
            )
        )

        async def ingest(*events: event_pb2.Event) -> None:
            await ingestion.Ingest(ingestion_service_pb2.IngestRequest(source_id="web", events=list(events)))

        async def profile_of(kind: str, value: str) -> str:
            async def lookup():
                try:
                    answer = await identity.Lookup(
                        identity_service_pb2.LookupRequest(identifier=identity_pb2.Identifier(type=kind, value=value))
                    )
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.NOT_FOUND, error
                    return None
                return answer.profile_id

            return await eventually(lookup)

        # An anonymous visitor and a known customer, then the visitor signs in as her: a merge.
        await ingest(_event(event_pb2.EVENT_TYPE_TRACK, anonymous_id="anon-1", event="Product Viewed"))
        await ingest(_event(event_pb2.EVENT_TYPE_IDENTIFY, user_id="ada", traits={"plan": "free"}))
        anonymous, known = await profile_of("anonymous_id", "anon-1"), await profile_of("user_id", "ada")
        assert anonymous != known
        await ingest(_event(event_pb2.EVENT_TYPE_IDENTIFY, user_id="ada", anonymous_id="anon-1"))
        survivor = await eventually(
            lambda: _same(profile_of("anonymous_id", "anon-1"), profile_of("user_id", "ada")), timeout=30
        )
        await consent_service_pb2_grpc.ConsentServiceStub(channels["consent"]).SetConsent(
            consent_service_pb2.SetConsentRequest(
                decision=consent_pb2.ConsentDecision(
                    profile_id=survivor, purpose="marketing", granted=True, source="test"
                )
            )
        )
        await ingest(_event(event_pb2.EVENT_TYPE_IDENTIFY, user_id="ada", traits={"plan": "enterprise"}))
        await eventually(lambda: webhook_receiver.requests, timeout=30)

        # A payload that is no Event: identity dead-letters it.
        nc = await nats.connect(mesh.nats_url)
        try:
            await nc.jetstream().publish(topics.EVENTS_RAW.subject(0, "nobody"), b"\xff not a protobuf")
        finally:
            await nc.close()
        await eventually(lambda: _total(recorded_metrics.points("mosaic.messaging.dead_letters")) > 0)

        # The gauges come from JetStream's consumer info: a poller of identity's own durables.
        lag = ConsumerLag(mesh.nats_url, "identity", lambda: range(PARTITIONS), interval=0.2)
        await lag.start()
        try:
            await eventually(lambda: _total(recorded_metrics.points("mosaic.dead_letters.stored")) > 0)
            seen = {name: recorded_metrics.points(name) for name in metrics.METRICS}
        finally:
            await lag.stop()
    finally:
        for channel in channels.values():
            await channel.close()

    missing = [name for name, points in seen.items() if not points]
    assert not missing, f"registered but never recorded: {missing}"
    for name, spec in metrics.METRICS.items():
        if spec.kind in ("counter", "histogram", "observable_counter"):
            assert _total(seen[name]) > 0, name
    stages = {
        (p.attributes["messaging.consumer.group.name"], p.attributes["messaging.destination.name"])
        for p in seen["mosaic.messaging.hop.duration"]
    }
    assert {
        ("identity", "events.raw"),
        ("profile", "events.resolved"),
        ("segmentation", "profile.updated"),
        ("delivery", "segment.membership"),
    } <= stages
    outcomes = {
        p.attributes["mosaic.delivery.outcome"]
        for p in seen["mosaic.delivery.deliveries"]
        if p.attributes["mosaic.destination.id"] == "hook"
    }
    assert "delivered" in outcomes
    # Granted for the send; a denial is recorded too when a check comes before the grant.
    assert "granted" in {p.attributes["mosaic.consent.decision"] for p in seen["mosaic.consent.check.duration"]}
    transitions = {
        (p.attributes["mosaic.segment.id"], p.attributes["mosaic.segment.direction"])
        for p in seen["mosaic.segment.transitions"]
    }
    assert ("enterprise", "entered") in transitions
    text = recorded_metrics.scrape()
    for served in (
        "mosaic_messaging_hop_duration_seconds_bucket",
        "mosaic_segment_transitions_total",
        "mosaic_delivery_deliveries_total",
        "mosaic_consent_check_duration_seconds_count",
        "mosaic_messaging_dead_letters_total",
    ):
        assert served in text, served


async def _same(first, second) -> str | None:
    """The profile id when both look-ups answer the same one."""
    a, b = await first, await second
    return a if a == b else None
