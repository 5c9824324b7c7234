"""Publishing to JetStream: traced, deduplicated, confirmed.

The payload is a protobuf message; `Nats-Msg-Id` carries the message id so JetStream drops a
duplicate within the stream's window, `Mosaic-Key` the key it was partitioned by, and
`traceparent` the W3C trace context so one trace crosses every hop. The subject is the key's
partition and token (`Topic.subject`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import nats
from opentelemetry import propagate, trace
from opentelemetry.context import Context

from mosaic.platform import messaging_spans, topics
from mosaic.platform.acks import Acks, checked
from mosaic.platform.errors import Unavailable
from mosaic.platform.nats_connection import JETSTREAM_DOWN, NATS_DOWN
from mosaic.platform.topics import Topic

tracer = trace.get_tracer("mosaic.bus")

_STREAM_FULL = 10077  # a stream at its max_msgs (or max_bytes) with discard NEW, sent as a 503

# The key a message was partitioned by; consumers keep order per key, not per partition.
KEY_HEADER = "Mosaic-Key"


class Publisher:
    """Stores messages on their key's partition of a topic, awaiting JetStream's confirmation."""

    def __init__(self, nc: nats.NATS, partitions: int) -> None:
        self._nc = nc
        self._acks = Acks(nc)
        self.partitions = partitions

    async def publish_many(
        self,
        topic: Topic,
        messages: Sequence[tuple[str, bytes, str]],
        timeout: float,
        contexts: Sequence[Context | None] | None,
    ) -> list[bytes]:
        """See `Bus.publish_many`; gives JetStream's answers, in order, each checked (`acks.checked`)."""
        name, kind = messaging_spans.publish_name(topic.name), trace.SpanKind.PRODUCER
        if contexts is None:
            with tracer.start_as_current_span(name, kind=kind) as span:
                self._describe(span, topic, messages)
                context_headers: dict[str, str] = {}
                propagate.inject(context_headers)
                return await self._send(topic, messages, [context_headers] * len(messages), timeout)
        spans = [
            tracer.start_span(name, context=context, kind=kind) for _, context in zip(messages, contexts, strict=True)
        ]
        try:
            headers: list[dict[str, str]] = []
            for span, message in zip(spans, messages, strict=True):
                self._describe(span, topic, (message,))
                headers.append({})
                propagate.inject(headers[-1], context=trace.set_span_in_context(span))
            return await self._send(topic, messages, headers, timeout)
        except BaseException as error:
            for span in spans:
                span.record_exception(error)
                span.set_status(trace.StatusCode.ERROR)
            raise
        finally:
            for span in spans:
                span.end()

    def _describe(self, span: trace.Span, topic: Topic, messages: Sequence[tuple[str, bytes, str]]) -> None:
        if len(messages) == 1:
            key, _, message_id = messages[0]
            partition = topics.partition_of(key, self.partitions)
            messaging_spans.published(span, topic.name, 1, message_id, partition)
        else:
            messaging_spans.published(span, topic.name, len(messages))

    async def _send(
        self,
        topic: Topic,
        messages: Sequence[tuple[str, bytes, str]],
        context_headers: Sequence[dict[str, str]],
        timeout: float,
    ) -> list[bytes]:
        if not messages:
            return []
        token = ""
        try:
            token, reply, answers = await self._acks.expect(len(messages))
            for index, ((key, payload, message_id), extra) in enumerate(zip(messages, context_headers, strict=False)):
                if index and not index % 256:
                    await asyncio.sleep(0)  # a big batch lets the flusher write and other calls run
                subject = topic.subject(topics.partition_of(key, self.partitions), key)
                headers = {"Nats-Msg-Id": message_id, KEY_HEADER: key, **extra}
                await self._nc.publish(subject, payload, reply=f"{reply}{index:x}", headers=headers)
            return [checked(answer) for answer in await asyncio.wait_for(answers, timeout)]
        except (*NATS_DOWN, *JETSTREAM_DOWN) as error:
            if getattr(error, "err_code", None) == _STREAM_FULL:
                raise Unavailable("nats", f"stream {topic.stream} is full (MOSAIC_NATS_STREAM_MAX_MESSAGES)") from error
            raise Unavailable("nats", f"publish to {topic.name} not confirmed: {type(error).__name__}") from error
        finally:
            self._acks.forget(token)
