"""Metrics through the OpenTelemetry metrics API: every name registered here, once.

`METRICS` is the registry: each metric's name (under `mosaic.`, OpenTelemetry's naming rules:
lower-case, dot-separated, the unit in `unit` and never in the name, counts of things in
`{curly}` units), its instrument kind, unit, meaning and attributes. Dashboards and alerts are
checked against it (tests/deploy/test_dashboards.py). Code records through the helpers below
(`ingested`, `identity_merged`...), never by creating instruments of its own.

`setup` builds the MeterProvider from the standard variables: `OTEL_METRICS_EXPORTER` (a
comma-separated list of `otlp`, `console`, `prometheus`, `none`; `none` by default, because
without a collector the OTLP default would log a failed export every minute), the exporter's
`OTEL_EXPORTER_OTLP_*` and `OTEL_METRIC_EXPORT_INTERVAL`. `MOSAIC_METRICS_PORT` (0, off, by
default) serves the Prometheus text format at `/metrics` on `OTEL_EXPORTER_PROMETHEUS_HOST`
(127.0.0.1 by default; 0.0.0.0 in Kubernetes). Until `setup` runs, the instruments are the
API's no-op proxies, so a library or a test that records costs nothing and exports nothing.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from mosaic.platform.config import ConfigError, Env


@dataclass(frozen=True)
class Metric:
    """One registered metric: what it counts or measures, in which unit, split by what."""

    name: str
    kind: str  # counter, histogram, gauge (observable) or observable_counter
    unit: str
    meaning: str
    attributes: tuple[str, ...] = ()


# Latency buckets in seconds: 1 ms to 10 s, where a gRPC call or a hop of the pipeline lives.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "mosaic.rpc.server.duration",
            "histogram",
            "s",
            "time to answer one gRPC call, by method and status code; its count is the calls",
            ("rpc.service", "rpc.method", "rpc.grpc.status_code"),
        ),
        Metric(
            "mosaic.ingest.events",
            "counter",
            "{event}",
            "events ingestion answered for, by source and outcome (accepted, duplicate, rejected, "
            "quarantined, blocked, suppressed; refused: told to retry by backpressure, a full stream "
            "or NATS away; rate_limited)",
            ("mosaic.source.id", "mosaic.ingest.outcome"),
        ),
        Metric(
            "mosaic.identity.merges",
            "counter",
            "{merge}",
            "profiles merged into another by identity resolution or an admin call",
        ),
        Metric(
            "mosaic.profile.versions",
            "counter",
            "{version}",
            "profile versions written (snapshots appended to a history)",
        ),
        Metric(
            "mosaic.messaging.process.duration",
            "histogram",
            "s",
            "time one consumed message took, from fetch to ack, by stage (consumer group), "
            "topic and outcome (ack, retry, dead_letter, redeliver)",
            ("messaging.consumer.group.name", "messaging.destination.name", "mosaic.messaging.outcome"),
        ),
        Metric(
            "mosaic.messaging.hop.duration",
            "histogram",
            "s",
            "time from a message's publish to its ack by a consumer: the latency of one hop",
            ("messaging.consumer.group.name", "messaging.destination.name"),
        ),
        Metric(
            "mosaic.messaging.dead_letters",
            "counter",
            "{message}",
            "messages this stage copied to DEAD_LETTERS",
            ("messaging.consumer.group.name", "messaging.destination.name"),
        ),
        Metric(
            "mosaic.consumer.lag",
            "gauge",
            "{message}",
            "messages of a partition not yet delivered to its durable consumer (JetStream's num_pending)",
            ("messaging.consumer.group.name", "messaging.destination.name", "mosaic.partition"),
        ),
        Metric(
            "mosaic.consumer.in_flight",
            "gauge",
            "{message}",
            "messages delivered to a durable and not yet acknowledged (num_ack_pending)",
            ("messaging.consumer.group.name", "messaging.destination.name", "mosaic.partition"),
        ),
        Metric(
            "mosaic.consumer.redelivered",
            "gauge",
            "{message}",
            "messages of a durable delivered more than once and still unacknowledged (num_redelivered)",
            ("messaging.consumer.group.name", "messaging.destination.name", "mosaic.partition"),
        ),
        Metric(
            "mosaic.consumer.delivered",
            "observable_counter",
            "{message}",
            "deliveries to a durable, redeliveries included (its consumer sequence): its rate is "
            "the stage's throughput",
            ("messaging.consumer.group.name", "messaging.destination.name", "mosaic.partition"),
        ),
        Metric(
            "mosaic.dead_letters.stored",
            "gauge",
            "{message}",
            "messages in the DEAD_LETTERS stream, by the stage that gave up on them",
            ("messaging.consumer.group.name",),
        ),
        Metric(
            "mosaic.ownership.partitions",
            "gauge",
            "{partition}",
            "partitions a replica holds the lease of and consumes; summed over a stage's replicas it "
            "is MOSAIC_PARTITIONS when every partition is consumed",
            ("messaging.consumer.group.name", "mosaic.ownership.member"),
        ),
        Metric(
            "mosaic.segment.transitions",
            "counter",
            "{transition}",
            "profiles entering or leaving a segment",
            ("mosaic.segment.id", "mosaic.segment.direction"),
        ),
        Metric(
            "mosaic.delivery.deliveries",
            "counter",
            "{delivery}",
            "deliveries finished, by destination and outcome (delivered, failed, suppressed, dead_lettered, discarded)",
            ("mosaic.destination.id", "mosaic.delivery.outcome"),
        ),
        Metric(
            "mosaic.consent.check.duration",
            "histogram",
            "s",
            "time to answer one CheckConsent, by decision (granted, denied)",
            ("mosaic.consent.decision",),
        ),
    )
}

# Served on the Prometheus endpoint by prometheus_client's own process collector, under the
# names Prometheus gives them; dashboards may read these too.
PROCESS_METRICS = {
    "process_cpu_seconds_total": "CPU time the service's process used, in seconds",
    "process_resident_memory_bytes": "the service's resident memory, in bytes",
}

_meter = metrics.get_meter("mosaic")


def _instrument(name: str) -> Any:
    spec = METRICS[name]
    if spec.kind == "counter":
        return _meter.create_counter(name, unit=spec.unit, description=spec.meaning)
    if spec.kind == "histogram":
        return _meter.create_histogram(
            name, unit=spec.unit, description=spec.meaning, explicit_bucket_boundaries_advisory=list(SECONDS_BUCKETS)
        )
    raise ValueError(f"{name} is observed, not recorded: use observe()")


RPC_DURATION = _instrument("mosaic.rpc.server.duration")
INGEST_EVENTS = _instrument("mosaic.ingest.events")
IDENTITY_MERGES = _instrument("mosaic.identity.merges")
PROFILE_VERSIONS = _instrument("mosaic.profile.versions")
PROCESS_DURATION = _instrument("mosaic.messaging.process.duration")
HOP_DURATION = _instrument("mosaic.messaging.hop.duration")
DEAD_LETTERS = _instrument("mosaic.messaging.dead_letters")
SEGMENT_TRANSITIONS = _instrument("mosaic.segment.transitions")
DELIVERIES = _instrument("mosaic.delivery.deliveries")
CONSENT_CHECK_DURATION = _instrument("mosaic.consent.check.duration")


def ingested(source_id: str, outcome: str, count: int = 1) -> None:
    """Count events ingestion answered for (outcome: accepted, duplicate, rejected...)."""
    if count:
        INGEST_EVENTS.add(count, {"mosaic.source.id": source_id, "mosaic.ingest.outcome": outcome})


def ingested_statuses(source_id: str, name: Callable[[int], str], statuses: Iterable[int]) -> None:
    """Count a batch's events by status: `name` turns a status into its enum name
    (EVENT_STATUS_ACCEPTED counts as `accepted`); only the distinct statuses are named."""
    for status, count in Counter(statuses).items():
        ingested(source_id, name(status).removeprefix("EVENT_STATUS_").lower(), count)


def identity_merged(count: int = 1) -> None:
    """Count profiles merged into a survivor."""
    IDENTITY_MERGES.add(count)


def profile_versions_written(count: int = 1) -> None:
    """Count profile versions appended to histories."""
    PROFILE_VERSIONS.add(count)


# Attribute dicts of the hooks below, made once per combination: a hook runs per message, and
# the SDK only reads them (they key its aggregation), so one dict serves every call.
_message_attributes: dict[tuple[str, str, str], tuple[dict[str, str], dict[str, str]]] = {}
_transition_attributes: dict[tuple[str, str], dict[str, str]] = {}
_delivery_attributes: dict[tuple[str, str], dict[str, str]] = {}
_DECISIONS = {True: {"mosaic.consent.decision": "granted"}, False: {"mosaic.consent.decision": "denied"}}


def message_processed(stage: str, topic: str, outcome: str, seconds: float, since_publish: float | None = None) -> None:
    """A consumed message's processing time and outcome (ack, retry, dead_letter, redeliver);
    `since_publish`, the time since JetStream stored it, is its hop latency when acked."""
    key = (stage, topic, outcome)
    cached = _message_attributes.get(key)
    if cached is None:
        hop = {"messaging.consumer.group.name": stage, "messaging.destination.name": topic}
        cached = _message_attributes[key] = ({**hop, "mosaic.messaging.outcome": outcome}, hop)
    attributes, hop = cached
    PROCESS_DURATION.record(seconds, attributes)
    if outcome == "dead_letter":
        DEAD_LETTERS.add(1, hop)
    elif since_publish is not None and outcome == "ack":
        HOP_DURATION.record(max(since_publish, 0.0), hop)


def segment_transition(segment_id: str, direction: str) -> None:
    """A profile entered (direction `entered`) or left (`left`) a segment."""
    key = (segment_id, direction)
    attributes = _transition_attributes.get(key)
    if attributes is None:
        attributes = _transition_attributes[key] = {
            "mosaic.segment.id": segment_id,
            "mosaic.segment.direction": direction,
        }
    SEGMENT_TRANSITIONS.add(1, attributes)


def delivery_finished(destination_id: str, outcome: str, count: int = 1) -> None:
    """Deliveries to a destination ended (delivered, failed, suppressed, dead_lettered, discarded)."""
    key = (destination_id, outcome)
    attributes = _delivery_attributes.get(key)
    if attributes is None:
        attributes = _delivery_attributes[key] = {
            "mosaic.destination.id": destination_id,
            "mosaic.delivery.outcome": outcome,
        }
    DELIVERIES.add(count, attributes)


def consent_checked(seconds: float, granted: bool) -> None:
    """How long one CheckConsent took to decide."""
    CONSENT_CHECK_DURATION.record(seconds, _DECISIONS[granted])


def observe(name: str, read: Callable[[], Iterable[tuple[float, Mapping[str, str | int]]]]) -> None:
    """Register a callback for an observable metric of the registry: `read` returns its
    current (value, attributes) pairs; it runs at every export or scrape, so it must only read
    what is already in memory."""
    spec = METRICS[name]

    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, dict(attributes)) for value, attributes in read()]

    if spec.kind == "gauge":
        _meter.create_observable_gauge(name, [callback], unit=spec.unit, description=spec.meaning)
    elif spec.kind == "observable_counter":
        _meter.create_observable_counter(name, [callback], unit=spec.unit, description=spec.meaning)
    else:
        raise ValueError(f"{name} is a {spec.kind}: record it, do not observe it")


_provider: Any = None
_http: Any = None


def exporter_names(environ: Mapping[str, str]) -> set[str]:
    """OTEL_METRICS_EXPORTER's names, checked."""
    names = {name.strip() for name in Env(environ).str("OTEL_METRICS_EXPORTER", "none").split(",")}
    unknown = names - {"otlp", "console", "prometheus", "none"}
    if unknown:
        raise ConfigError("OTEL_METRICS_EXPORTER", f"must be otlp, console, prometheus or none, got {sorted(unknown)}")
    return names


def setup(service: str, environ: Mapping[str, str] | None = None, readers: Iterable[Any] = ()) -> int:
    """Build the MeterProvider once per process; returns the Prometheus port (0: not served).

    `readers` adds metric readers of the caller's own (a test's in-memory reader)."""
    global _provider, _http
    environ = os.environ if environ is None else environ
    exporters = exporter_names(environ)
    port = Env(environ).int("MOSAIC_METRICS_PORT", 0, maximum=65535)
    if _provider is not None or environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return 0
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    all_readers = list(readers)
    if "otlp" in exporters:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        all_readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if "console" in exporters:
        all_readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr)))
    served = 0
    if port or "prometheus" in exporters:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        all_readers.append(PrometheusMetricReader())
        _http, _ = start_http_server(port or 9464, addr=Env(environ).str("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"))
        served = _http.server_address[1]
    if not all_readers:
        return 0
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", service)})
    _provider = MeterProvider(resource=resource, metric_readers=all_readers)
    metrics.set_meter_provider(_provider)
    return served


def enabled() -> bool:
    """True once `setup` installed a provider: something reads what is recorded."""
    return _provider is not None


def shutdown() -> None:
    """Export what is pending and stop serving /metrics."""
    global _provider, _http
    if _http is not None:
        _http.shutdown()
        _http = None
    if _provider is not None:
        _provider.shutdown(timeout_millis=5_000)
