"""OpenTelemetry tracing from the standard OTEL_* variables, and structured logs.

Traces: `OTEL_TRACES_EXPORTER` (`otlp`, the default, `zipkin`, `console`, a comma-separated list
of them such as `otlp,zipkin`, or `none`), the exporters' own `OTEL_EXPORTER_OTLP_*` and
`OTEL_EXPORTER_ZIPKIN_ENDPOINT` variables, `OTEL_SERVICE_NAME` (defaults to the service name) and
`OTEL_BSP_*` for batching, and the sampler from `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`
(`parentbased_always_on` by default: a call that arrives with a sampled traceparent is traced,
one that starts a trace is too). Metrics are `mosaic.platform.metrics`'s. Logs: one JSON object a
line on stderr, carrying the trace and span ids of the current span, so a log line can be found from a trace and back.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from mosaic.platform.config import ConfigError

# Every span attribute the code sets is registered here with its type and meaning, so
# dashboards, trace queries and code agree on one name. Domain attributes live under the
# `mosaic.` prefix; the `messaging.` and `rpc.` ones are OpenTelemetry's semantic conventions
# (messaging_spans.py sets the former, the gRPC instrumentation the latter), as are `http.` and
# `url.`.
ATTRIBUTES = {
    "mosaic.profile.id": "str: the profile an operation is about",
    "mosaic.profile.version": "int: the profile version a change produced",
    "mosaic.event.message_id": "str: the customer event's message id",
    "mosaic.event.type": "str: the customer event's type (track, identify...)",
    "mosaic.segment.id": "str: the segment evaluated or entered",
    "mosaic.destination.id": "str: the destination delivered to",
    "mosaic.delivery.id": "str: the delivery's id, its idempotency key at the destination",
    "mosaic.delivery.attempt": "int: which attempt at sending a delivery this is (from 1)",
    "mosaic.consent.purpose": "str: the consent purpose checked",
    "mosaic.partition": "int: the bus partition a message travelled on (metrics; spans say messaging.destination.partition.id)",
    "mosaic.source.id": "str: the ingestion source events came from",
    "mosaic.ingest.batch_size": "int: how many events one ingestion call carried",
    "messaging.system": "str: the messaging system, always `nats`",
    "messaging.operation.type": "str: `send` for a publish span, `process` for a handler's span",
    "messaging.operation.name": "str: the operation's own name, `publish` or `process`; the span name's first word",
    "messaging.destination.name": "str: the topic (events.raw...), or delivery.jobs",
    "messaging.destination.partition.id": "str: the topic's partition the message is on (its subject's last token)",
    "messaging.message.id": "str: the message's Nats-Msg-Id (JetStream drops a duplicate of it)",
    "messaging.batch.message_count": "int: how many messages one publish span sent (batches only)",
    "messaging.consumer.group.name": "str: the consuming service (its durables are `<service>-<partition>`), or a destination's job durable",
    "rpc.system": "str: `grpc`",
    "rpc.service": "str: the full gRPC service name (mosaic.profile.v1.ProfileService)",
    "rpc.method": "str: the gRPC method (GetProfile)",
    "rpc.grpc.status_code": "int: the call's gRPC status code (0 OK, 5 NOT_FOUND...)",
    "http.request.method": "str: an HTTP span's method (ingestion's API, delivery's webhooks)",
    "http.response.status_code": "int: the HTTP status answered or received",
    "url.path": "str: the path ingestion's HTTP API was called on",
    "url.full": "str: the URL a webhook was sent to",
}

_configured = False


def setup(service: str, log_level: str = "INFO", environ: Mapping[str, str] | None = None) -> None:
    """Configure tracing and logging once per process."""
    global _configured
    if _configured:
        return
    _configured = True
    environ = os.environ if environ is None else environ
    _setup_logging(log_level)
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return
    exporters = exporters_from(environ)
    if not exporters:
        # No SDK provider at all: spans nobody exports would still cost ~10 % of a consumer's CPU
        # (pipeline bench); the API's no-op spans carry the incoming trace context on unchanged.
        return
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", service)})
    provider = TracerProvider(resource=resource, sampler=sampler_from(environ))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def exporters_from(environ: Mapping[str, str]) -> list[SpanExporter]:
    """The span exporters OTEL_TRACES_EXPORTER names (comma-separated), none for `none`."""
    raw = environ.get("OTEL_TRACES_EXPORTER", "otlp")
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if names == ["none"]:
        return []
    if not names or not set(names) <= {"otlp", "zipkin", "console"}:
        raise ConfigError(
            "OTEL_TRACES_EXPORTER",
            f"must be otlp, zipkin, console (or a comma-separated list of them) or none, got {raw!r}",
        )
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "zipkin":
            # Reads OTEL_EXPORTER_ZIPKIN_ENDPOINT (http://localhost:9411/api/v2/spans by default).
            from opentelemetry.exporter.zipkin.json import ZipkinExporter

            exporters.append(ZipkinExporter())
        else:
            exporters.append(ConsoleSpanExporter(out=sys.stderr))
    return exporters


_SAMPLERS = {
    "always_on": lambda ratio: sampling.ALWAYS_ON,
    "always_off": lambda ratio: sampling.ALWAYS_OFF,
    "traceidratio": sampling.TraceIdRatioBased,
    "parentbased_always_on": lambda ratio: sampling.ParentBased(sampling.ALWAYS_ON),
    "parentbased_always_off": lambda ratio: sampling.ParentBased(sampling.ALWAYS_OFF),
    "parentbased_traceidratio": lambda ratio: sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
}


def sampler_from(environ: Mapping[str, str]) -> sampling.Sampler:
    """The sampler that OTEL_TRACES_SAMPLER (and its _ARG, a ratio for the ratio samplers) names."""
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip() or "parentbased_always_on"
    if name not in _SAMPLERS:
        raise ConfigError("OTEL_TRACES_SAMPLER", f"must be one of {', '.join(_SAMPLERS)}, got {name!r}")
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    try:
        ratio = float(raw) if raw else 1.0
    except ValueError:
        raise ConfigError("OTEL_TRACES_SAMPLER_ARG", f"must be a ratio between 0 and 1, got {raw!r}") from None
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError("OTEL_TRACES_SAMPLER_ARG", f"must be a ratio between 0 and 1, got {ratio}")
    return _SAMPLERS[name](ratio)


def shutdown() -> None:
    """Flush spans still in the batch processor."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the current trace and span ids."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The driver and client libraries are chatty at INFO.
    for noisy in ("cassandra", "nats", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Cassandra 5 warns about any prepared statement that names its keyspace outside the query
    # text, including protocol v5's per-statement keyspace, which is exactly what the store does
    # to stay unambiguous; the warning would repeat for every statement prepared.
    logging.getLogger("cassandra.protocol").addFilter(lambda record: "USE <keyspace>" not in record.getMessage())
