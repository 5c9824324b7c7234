"""Metrics: the registry's names follow OpenTelemetry's rules; a real service records its gRPC
calls by method and code (health probes neither counted nor traced) and serves them on a real
Prometheus endpoint; consumer lag comes from a real nats-server's consumer info."""

from __future__ import annotations

import re

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nats.js import api
from opentelemetry import trace

from mosaic.events.v1 import event_pb2
from mosaic.platform import metrics, topics
from mosaic.platform.config import ConfigError
from mosaic.platform.consumer_lag import ConsumerLag
from mosaic.platform.errors import NotFound
from mosaic.platform.server import Service
from mosaic.testing.plugin import eventually
from mosaic.testing.plugin import metric_points as points
from mosaic.testing.plugin import scrape_metrics as scrape

NAME = re.compile(r"^mosaic(\.[a-z][a-z0-9_]*)+$")


@pytest.fixture
def exported(recorded_metrics):
    """This process's metrics, as the SDK exports them (in memory) and as Prometheus scrapes them."""
    return recorded_metrics.reader, recorded_metrics.port


@pytest.fixture
def spans(recorded_spans):
    return recorded_spans


def test_every_registered_name_follows_the_naming_rules():
    for name, spec in metrics.METRICS.items():
        assert NAME.match(name), name
        assert spec.kind in {"counter", "histogram", "gauge", "observable_counter"}, name
        assert spec.unit and spec.meaning, name
        # The unit is the unit's field, never in the name; no Prometheus suffixes either.
        assert not re.search(r"(seconds|millis|_total|bytes)$", name), name
        for attribute in spec.attributes:
            assert re.match(r"^[a-z][a-z0-9_.]*$", attribute), attribute


def test_a_misspelt_exporter_is_refused_naming_the_variable():
    with pytest.raises(ConfigError) as refused:
        metrics.exporter_names({"OTEL_METRICS_EXPORTER": "otlp,prometheus,jaeger"})
    assert refused.value.variable == "OTEL_METRICS_EXPORTER" and "jaeger" in refused.value.rule
    assert metrics.exporter_names({}) == {"none"}


def test_observing_a_recorded_metric_is_refused():
    with pytest.raises(ValueError):
        metrics.observe("mosaic.ingest.events", lambda: [])


def test_ingested_counts_reach_the_prometheus_endpoint(exported):
    reader, port = exported
    metrics.ingested("web", "accepted", 3)
    metrics.ingested("web", "quarantined")
    metrics.ingested("web", "rejected", 0)  # nothing to count: no series
    text = scrape(port)
    assert re.search(r'mosaic_ingest_events_total\{[^}]*mosaic_ingest_outcome="accepted"[^}]*\} 3\.0', text), text
    assert re.search(r'mosaic_ingest_events_total\{[^}]*mosaic_ingest_outcome="quarantined"[^}]*\} 1\.0', text)
    assert 'mosaic_ingest_outcome="rejected"' not in text


def test_a_batch_is_counted_by_status_name(exported):
    reader, _ = exported
    from mosaic.ingestion.v1 import ingestion_service_pb2 as S

    statuses = [S.EVENT_STATUS_ACCEPTED] * 4 + [S.EVENT_STATUS_SUPPRESSED, S.EVENT_STATUS_DUPLICATE]
    metrics.ingested_statuses("crm", S.EventStatus.Name, statuses)
    counted = {
        p.attributes["mosaic.ingest.outcome"]: p.value
        for p in points(reader, "mosaic.ingest.events")
        if p.attributes["mosaic.source.id"] == "crm"
    }
    assert counted == {"accepted": 4, "suppressed": 1, "duplicate": 1}


async def _not_found(request: bytes, context) -> bytes:
    raise NotFound("profile", "p-1")


async def test_grpc_calls_are_timed_by_method_and_code_and_health_probes_are_neither_timed_nor_traced(
    exported, spans, make_settings
):
    reader, port = exported

    async def build(runtime):
        handler = grpc.method_handlers_generic_handler(
            "mosaic.test.v1.TestService", {"Fail": grpc.unary_unary_rpc_method_handler(_not_found)}
        )
        runtime.server.add_generic_rpc_handlers([handler])

    service = Service(make_settings("tester"), build)
    await service.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            for _ in range(3):
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await channel.unary_unary("/mosaic.test.v1.TestService/Fail")(b"")
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND
            stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            assert [answer async for answer in stream]
    finally:
        await service.stop()
    calls = {
        (p.attributes["rpc.method"], p.attributes["rpc.grpc.status_code"]): p.count
        for p in points(reader, "mosaic.rpc.server.duration")
    }
    assert calls[("Fail", "NOT_FOUND")] == 1
    assert calls[("ServerReflectionInfo", "OK")] == 1
    assert not [method for method, _ in calls if method in ("Check", "Watch")]
    names = [span.name for span in spans.get_finished_spans()]
    assert "/mosaic.test.v1.TestService/Fail" in names
    # The RPC semantic conventions, from the gRPC instrumentation.
    (failed_span,) = [span for span in spans.get_finished_spans() if span.name == "/mosaic.test.v1.TestService/Fail"]
    assert failed_span.kind == trace.SpanKind.SERVER
    assert {
        name: failed_span.attributes[name]
        for name in ("rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code")
    } == {
        "rpc.system": "grpc",
        "rpc.service": "mosaic.test.v1.TestService",
        "rpc.method": "Fail",
        "rpc.grpc.status_code": grpc.StatusCode.NOT_FOUND.value[0],
    }
    assert not [name for name in names if "grpc.health" in name]
    assert "mosaic_rpc_server_duration_seconds_bucket" in scrape(port)


async def test_consumer_lag_per_durable_and_partition_comes_from_jetstream(exported, nats_server):
    reader, _ = exported
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    topic = topics.EVENTS_RAW
    await js.add_stream(api.StreamConfig(name=topic.stream, subjects=[topic.wildcard]))
    await js.add_stream(api.StreamConfig(name=topics.DEAD_LETTER_STREAM, subjects=[topics.DEAD_LETTER_SUBJECTS]))
    for partition in (0, 1, 2):
        await js.add_consumer(
            topic.stream,
            api.ConsumerConfig(
                durable_name=f"identity-{partition}",
                filter_subject=topic.partition_subjects(partition),
                ack_policy=api.AckPolicy.EXPLICIT,
            ),
        )
    await js.add_consumer(
        topic.stream, api.ConsumerConfig(durable_name="profile-0", filter_subject=topic.partition_subjects(0))
    )
    payload = event_pb2.Event(message_id="m").SerializeToString()
    for _ in range(5):
        await js.publish(topic.subject(0, "ada"), payload)
    await js.publish(topic.subject(2, "bob"), payload)
    await js.publish(f"deadletter.identity.{topic.subject(0, 'ada')}", payload)
    await js.publish(f"deadletter.profile.{topics.EVENTS_RESOLVED.subject(0, 'p-ada')}", payload)

    # This replica holds partitions 0 and 1 of identity: partition 2 and profile's are not its.
    owned = {0, 1}
    lag = ConsumerLag(nats_server.url, "identity", lambda: owned, interval=0.1)
    await lag.start()
    try:
        found = {
            (p.attributes["mosaic.partition"], p.attributes["messaging.destination.name"]): p.value
            for p in points(reader, "mosaic.consumer.lag")
            if p.attributes["messaging.consumer.group.name"] == "identity"
        }
        assert found == {(0, "events.raw"): 5, (1, "events.raw"): 0}
        (stored,) = [
            p.value
            for p in points(reader, "mosaic.dead_letters.stored")
            if p.attributes["messaging.consumer.group.name"] == "identity"
        ]
        assert stored == 1
        # Two delivered, one acked: lag 3, in flight 1; the next poll sees it.
        sub = await js.pull_subscribe(topic.partition_subjects(0), durable="identity-0", stream=topic.stream)
        first, second = await sub.fetch(2, timeout=5)
        await first.ack()

        def moved():
            lags = {
                p.attributes["mosaic.partition"]: p.value
                for p in points(reader, "mosaic.consumer.lag")
                if p.attributes["messaging.consumer.group.name"] == "identity"
            }
            flight = {
                p.attributes["mosaic.partition"]: p.value
                for p in points(reader, "mosaic.consumer.in_flight")
                if p.attributes["messaging.consumer.group.name"] == "identity"
            }
            return lags.get(0) == 3 and flight.get(0) == 1

        await eventually(moved, timeout=10)

        # Partitions 0 and 1 handed over, 2 taken over: the gauges follow.
        owned.clear()
        assert not [p for p in points(reader, "mosaic.consumer.lag") if p.attributes["mosaic.partition"] in (0, 1)]
        owned.add(2)
        await lag.acquired(frozenset({2}))

        def taken_over():
            return {
                p.attributes["mosaic.partition"]: p.value
                for p in points(reader, "mosaic.consumer.lag")
                if p.attributes["messaging.consumer.group.name"] == "identity"
            } == {2: 1}

        await eventually(taken_over, timeout=10)
    finally:
        await lag.stop()
        await nc.close()
    assert not [
        p for p in points(reader, "mosaic.consumer.lag") if p.attributes["messaging.consumer.group.name"] == "identity"
    ], "a stopped collector still reports"
