"""The bus's batch form against a real nats-server: whole batches in stream order, all acked;
a failed batch done again one message at a time; each message's own trace through a batch."""

import asyncio

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from mosaic.events.v1 import event_pb2
from mosaic.platform.bus import Bus
from mosaic.platform.consumer import Delivery, one_by_one
from mosaic.platform.errors import InvalidArgument
from mosaic.platform.topics import Topic
from mosaic.testing.plugin import eventually

TOPIC = Topic("test.batches", "TEST_BATCHES", event_pb2.Event)


def event(message_id: str, user_id: str = "u1") -> event_pb2.Event:
    return event_pb2.Event(message_id=message_id, user_id=user_id, type=event_pb2.EVENT_TYPE_TRACK, event="Clicked")


async def connect(nats_server, partitions=1) -> Bus:
    bus = await Bus.connect(nats_server.url, "batcher", partitions)
    await bus.ensure_streams([TOPIC])
    return bus


async def unacked(bus: Bus, partition: int = 0) -> int:
    info = await bus._js.consumer_info(TOPIC.stream, f"batcher-{partition}")
    return info.num_pending + info.num_ack_pending


async def all_acked(bus: Bus) -> bool:
    return await unacked(bus) == 0


async def publish(bus: Bus, count: int, keys: int = 5) -> None:
    messages = [
        (f"user-{i % keys}", event(f"m{i}", f"user-{i % keys}").SerializeToString(), f"m{i}") for i in range(count)
    ]
    await bus.publish_many(TOPIC, messages)


async def test_a_batch_handler_gets_whole_batches_in_stream_order_and_all_are_acked(nats_server):
    bus = await connect(nats_server)
    await publish(bus, 300)
    batches: list[list[int]] = []

    async def one(message, delivery):
        raise AssertionError("the batch form never failed, so the per-message one is not used")

    async def many(items):
        assert all(delivery.key == message.user_id for message, delivery in items)
        batches.append([int(message.message_id[1:]) for message, _ in items])

    bus.consume(TOPIC, one, [0], batch_handler=many)
    await eventually(lambda: sum(map(len, batches)) == 300)
    assert [n for batch in batches for n in batch] == list(range(300)), "stream order, each once"
    assert max(map(len, batches)) > 1, "messages were handed over in batches"
    await eventually(lambda: all_acked(bus))
    await bus.close()


async def test_a_failed_batch_is_done_again_one_message_at_a_time(nats_server):
    bus = await connect(nats_server)
    await publish(bus, 40)
    await bus.publish(TOPIC, "user-0", event("poison"), "poison")
    handled: list[str] = []

    async def one(message, delivery):
        if message.message_id == "poison":
            raise InvalidArgument("event", "is poison")
        handled.append(message.message_id)

    async def many(items):
        if any(message.message_id == "poison" for message, _ in items):
            raise InvalidArgument("event", "is poison")
        handled.extend(message.message_id for message, _ in items)

    bus.consume(TOPIC, one, [0], batch_handler=many)
    await eventually(lambda: len(handled) == 40)
    assert sorted(handled) == sorted(f"m{i}" for i in range(40)), "each good message handled once"
    assert (await bus._js.stream_info("DEAD_LETTERS")).state.messages == 1, "the poison message alone is dead-lettered"
    await eventually(lambda: all_acked(bus))
    await bus.close()


async def test_each_message_of_a_batched_publish_carries_its_own_trace(nats_server):
    bus = await connect(nats_server)
    contexts = [
        trace.set_span_in_context(
            NonRecordingSpan(
                SpanContext(
                    trace_id=trace_id, span_id=trace_id + 1, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
                )
            )
        )
        for trace_id in (0x1111, 0x2222)
    ]
    messages = [("u1", event("a").SerializeToString(), "a"), ("u2", event("b").SerializeToString(), "b")]
    await bus.publish_many(TOPIC, messages, contexts=contexts)
    seen = []
    for sequence in (1, 2):
        stored = await bus._js.get_msg(TOPIC.stream, sequence)
        seen.append(int(stored.headers["traceparent"].split("-")[1], 16))
    assert seen == [0x1111, 0x2222]
    await bus.close()


async def test_a_stop_during_a_batch_finishes_it_and_gives_back_the_rest(nats_server):
    bus = await connect(nats_server)
    await publish(bus, 500)
    started, release = asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def one(message, delivery):
        handled.append(message.message_id)

    async def many(items):
        started.set()
        await release.wait()
        handled.extend(message.message_id for message, _ in items)

    bus.consume(TOPIC, one, [0], batch_handler=many)
    await started.wait()
    stopping = asyncio.create_task(bus.stop_consuming())
    await asyncio.sleep(0.1)
    release.set()
    await stopping
    assert 0 < len(handled) < 500, "the batch in hand was finished, the rest left"

    async def settled() -> bool:  # acks are sent without waiting for the server's answer
        return await unacked(bus) == 500 - len(handled)

    await eventually(settled)  # nothing handled is left unacked, nothing unhandled acked
    await bus.close()


async def test_one_by_one_runs_each_message_in_order_under_its_own_trace():
    def delivery(n: int) -> Delivery:
        span = NonRecordingSpan(SpanContext(trace_id=n + 1, span_id=n + 1, is_remote=True))
        return Delivery("s", 0, n, 1, f"m{n}", "k", trace.set_span_in_context(span))

    seen = []

    async def handler(payload, _delivery) -> None:
        seen.append((payload, trace.get_current_span().get_span_context().trace_id))

    await one_by_one(handler)([(f"m{n}", delivery(n)) for n in range(3)])
    assert seen == [("m0", 1), ("m1", 2), ("m2", 3)]
    assert not trace.get_current_span().get_span_context().is_valid, "each trace was detached after"
