"""Span names and attributes of messages on NATS, after OpenTelemetry's messaging semantic
conventions, for the bus and for delivery's job queues alike.

A topic is the destination (`messaging.destination.name` = `events.raw`) and its partition is
`messaging.destination.partition.id`, as for a Kafka topic: the subject `events.raw.3` is only
how a partition is addressed on NATS, and the topic keeps span names and metric series few.
Spans are named `{messaging.operation.name} {destination}`: NATS's own verb `publish` for a
send (operation type `send`, kind PRODUCER, its context the message's creation context) and
`process` for a handler's work (kind CONSUMER, the child of the producer's span).

Attributes are set only on a span that records (`span.is_recording()`): without an SDK
provider every span is the API's no-op one, and the dicts would be made for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span

SYSTEM = "nats"


def recording() -> bool:
    """Whether spans are recorded at all: an SDK provider is set (none is without an exporter,
    `mosaic.platform.telemetry.setup`). Read per fetched batch, so a provider set later counts."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def carried(headers: Mapping[str, str] | None) -> Context | None:
    """The trace context a message carries, for a consumer that records no span of its own to
    pass on downstream; None when it carries none of the configured propagators' headers (the
    common case is spared their parsing)."""
    textmap = propagate.get_global_textmap()
    if not headers or headers.keys().isdisjoint(_fields(textmap)):
        return None
    return textmap.extract(headers)


@cache
def _fields(textmap: TextMapPropagator) -> frozenset[str]:
    return frozenset(textmap.fields)  # a composite propagator unions its parts' on every read


@cache
def publish_name(destination: str) -> str:
    return f"publish {destination}"


@cache
def process_name(destination: str) -> str:
    return f"process {destination}"


@cache
def _publishing(destination: str, partition: int | None) -> dict[str, str]:
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": destination,
    }
    if partition is not None:
        attributes["messaging.destination.partition.id"] = str(partition)
    return attributes


@cache
def _processing(destination: str, group: str, partition: int | None) -> dict[str, str]:
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": destination,
        "messaging.consumer.group.name": group,
    }
    if partition is not None:
        attributes["messaging.destination.partition.id"] = str(partition)
    return attributes


def published(span: Span, destination: str, count: int, message_id: str = "", partition: int | None = None) -> None:
    """Describe a publish span: one message (its id and partition) or a batch of `count`."""
    if not span.is_recording():
        return
    span.set_attributes(_publishing(destination, partition))
    if count == 1:
        span.set_attribute("messaging.message.id", message_id)
    else:
        span.set_attribute("messaging.batch.message_count", count)


def processed(span: Span, destination: str, group: str, message_id: str, partition: int | None = None) -> None:
    """Describe a process span of one message consumed by `group` (the durable's service)."""
    if not span.is_recording():
        return
    span.set_attributes(_processing(destination, group, partition))
    span.set_attribute("messaging.message.id", message_id)
