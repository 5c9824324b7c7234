"""The bus's spans follow OpenTelemetry's messaging conventions: one message published and
consumed through a real nats-server, its spans kept by the real SDK in memory. A publish span
`publish <topic>` (PRODUCER) is the parent of the consumer's `process <topic>` (CONSUMER), and
a batch handler's own publishes continue each message's trace."""

from __future__ import annotations

import asyncio

from opentelemetry import trace

from mosaic.events.v1 import event_pb2
from mosaic.platform import messaging_spans, telemetry
from mosaic.platform.bus import KEY_HEADER, Bus
from mosaic.platform.topics import Topic, partition_of
from mosaic.testing.plugin import eventually

FIRST = Topic("spans.first", "SPANS_FIRST", event_pb2.Event)
BATCHED = Topic("spans.batched", "SPANS_BATCHED", event_pb2.Event)
FORWARDED = Topic("spans.forwarded", "SPANS_FORWARDED", event_pb2.Event)
UNRECORDED = Topic("spans.unrecorded", "SPANS_UNRECORDED", event_pb2.Event)
PARTITIONS = 4


def _event(message_id: str) -> event_pb2.Event:
    return event_pb2.Event(message_id=message_id, user_id="ada", type=event_pb2.EVENT_TYPE_TRACK, event="Clicked")


def _named(exporter, name: str) -> list:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def test_one_message_makes_a_publish_span_and_a_process_span_under_it(nats_server, recorded_spans):
    bus = await Bus.connect(nats_server.url, "spanner", PARTITIONS)
    await bus.ensure_streams([FIRST])
    handled = asyncio.Event()

    async def handle(message, delivery):
        handled.set()

    try:
        bus.consume(FIRST, handle, range(PARTITIONS))
        await bus.publish(FIRST, "ada", _event("span-1"), "span-1")
        await asyncio.wait_for(handled.wait(), 20)
    finally:
        await bus.close()  # the process span ends once the message is acked
    (publish,) = _named(recorded_spans, "publish spans.first")
    (process,) = _named(recorded_spans, "process spans.first")
    partition = str(partition_of("ada", PARTITIONS))
    assert publish.kind == trace.SpanKind.PRODUCER
    assert dict(publish.attributes) == {
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "spans.first",
        "messaging.destination.partition.id": partition,
        "messaging.message.id": "span-1",
    }
    assert process.kind == trace.SpanKind.CONSUMER
    assert dict(process.attributes) == {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "spans.first",
        "messaging.destination.partition.id": partition,
        "messaging.consumer.group.name": "spanner",
        "messaging.message.id": "span-1",
    }
    # The producer's context crossed NATS in the traceparent header: one trace, parent and child.
    assert process.context.trace_id == publish.context.trace_id
    assert process.parent is not None and process.parent.span_id == publish.context.span_id
    assert process.parent.is_remote
    for span in (publish, process):
        assert set(span.attributes) <= set(telemetry.ATTRIBUTES), "every attribute is registered"


async def test_a_batch_handlers_publishes_continue_each_messages_trace(nats_server, recorded_spans):
    """A stage that handles a whole batch and publishes one message per message it consumed
    (identity, profile) gives each its own publish span, under that message's process span."""
    upstream = await Bus.connect(nats_server.url, "upstream", PARTITIONS)
    stage = await Bus.connect(nats_server.url, "stage", PARTITIONS)
    await upstream.ensure_streams([BATCHED, FORWARDED])
    forwarded: list[str] = []

    async def one(message, delivery):
        raise AssertionError("the batch handler takes every batch here")

    async def batch(items):
        await stage.publish_many(
            FORWARDED,
            [(d.key, m.SerializeToString(), f"fwd-{d.message_id}") for m, d in items],
            contexts=[d.trace_context for _, d in items],
        )
        forwarded.extend(d.message_id for _, d in items)

    try:
        stage.consume(BATCHED, one, range(PARTITIONS), batch_handler=batch)
        await upstream.publish_many(
            BATCHED,
            [("ada", _event("b-1").SerializeToString(), "b-1"), ("ada", _event("b-2").SerializeToString(), "b-2")],
        )
        await eventually(lambda: len(forwarded) == 2)
    finally:
        await stage.close()
        await upstream.close()
    (sent,) = _named(recorded_spans, "publish spans.batched")
    assert sent.attributes["messaging.batch.message_count"] == 2
    assert "messaging.message.id" not in sent.attributes  # a batch's span names no one message
    processes = {
        span.attributes["messaging.message.id"]: span for span in _named(recorded_spans, "process spans.batched")
    }
    forwards = {
        span.attributes["messaging.message.id"]: span for span in _named(recorded_spans, "publish spans.forwarded")
    }
    assert set(processes) == {"b-1", "b-2"} and set(forwards) == {"fwd-b-1", "fwd-b-2"}
    for message_id, process in processes.items():
        assert process.parent.span_id == sent.context.span_id
        forward = forwards[f"fwd-{message_id}"]
        assert forward.kind == trace.SpanKind.PRODUCER
        assert forward.parent.span_id == process.context.span_id
        assert forward.context.trace_id == sent.context.trace_id


async def test_a_consumer_that_records_no_spans_passes_each_messages_context_on_as_it_came(
    nats_server, recorded_spans, monkeypatch
):
    """Without an SDK provider a consumer makes no process spans (their cost was ~10 % of a
    consumer's CPU); a message's incoming trace context still reaches the handler, so what it
    publishes stays in the producer's trace, and a message that carries none gets none."""
    upstream = await Bus.connect(nats_server.url, "upstream", PARTITIONS)
    stage = await Bus.connect(nats_server.url, "quiet-stage", PARTITIONS)
    await upstream.ensure_streams([UNRECORDED])
    contexts = {}

    async def one(message, delivery):
        raise AssertionError("the batch handler takes every batch here")

    async def batch(items):
        contexts.update((d.message_id, d.trace_context) for _, d in items)

    monkeypatch.setattr(messaging_spans, "recording", lambda: False)  # the stage alone has no provider
    try:
        stage.consume(UNRECORDED, one, range(PARTITIONS), batch_handler=batch)
        await upstream.publish(UNRECORDED, "ada", _event("traced"), "traced")
        untraced = _event("untraced").SerializeToString()
        subject = UNRECORDED.subject(partition_of("ada", PARTITIONS), "ada")
        await upstream.jetstream.publish(subject, untraced, headers={"Nats-Msg-Id": "untraced", KEY_HEADER: "ada"})
        await eventually(lambda: len(contexts) == 2)
    finally:
        await stage.close()
        await upstream.close()
    (sent,) = _named(recorded_spans, "publish spans.unrecorded")
    assert not _named(recorded_spans, "process spans.unrecorded")
    carried = trace.get_current_span(contexts["traced"]).get_span_context()
    assert carried.trace_id == sent.context.trace_id and carried.span_id == sent.context.span_id
    assert contexts["untraced"] is None
