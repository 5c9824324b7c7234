"""Per-key subjects: a message's subject carries its key's token, a partition's consumer still
gets every message of its keys in order, and one key's messages are erased without a trace."""

import asyncio

from mosaic.events.v1 import event_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.errors import InvalidArgument
from mosaic.platform.topics import Topic, key_token, partition_of
from mosaic.testing.plugin import eventually
from mosaic.testing.scan import messages_mentioning

TOPIC = Topic("test.events", "TEST_EVENTS", event_pb2.Event, consumers=("tester",))
PARTITIONS = 2


def event(message_id: str, user_id: str) -> event_pb2.Event:
    return event_pb2.Event(message_id=message_id, user_id=user_id, type=event_pb2.EVENT_TYPE_TRACK, event="Clicked")


async def connect(nats_server) -> Bus:
    bus = await Bus.connect(nats_server.url, "tester", PARTITIONS)
    await bus.ensure_streams([TOPIC])
    return bus


def test_a_key_token_is_a_fixed_subject_token_that_does_not_name_the_key():
    token = key_token("ada@example.com")
    assert token == key_token("ada@example.com") != key_token("bob@example.com")
    assert len(token) == 16 and token.isalnum() and "ada" not in token
    assert TOPIC.subject(1, "a key. with dots") == f"test.events.1.{key_token('a key. with dots')}"


async def test_a_subject_carries_its_keys_token_and_a_partition_consumer_gets_every_message_in_order(nats_server):
    bus = await connect(nats_server)
    keys = [f"user-{n}" for n in range(6)]
    await bus.publish_many(
        TOPIC, [(keys[i % 6], event(f"m{i}", keys[i % 6]).SerializeToString(), f"m{i}") for i in range(120)]
    )
    seen: dict[str, list[int]] = {}

    async def handle(message, delivery):
        assert delivery.subject == TOPIC.subject(partition_of(delivery.key, PARTITIONS), delivery.key)
        assert delivery.partition == partition_of(delivery.key, PARTITIONS)
        seen.setdefault(message.user_id, []).append(int(message.message_id[1:]))

    bus.consume(TOPIC, handle, range(PARTITIONS))
    await eventually(lambda: sum(len(v) for v in seen.values()) == 120)
    assert sorted(seen) == keys
    assert all(numbers == sorted(numbers) and len(numbers) == 20 for numbers in seen.values())
    await bus.close()


async def test_erasing_a_key_deletes_its_messages_and_dead_letters_and_leaves_no_copy_on_disk(nats_server):
    bus = await connect(nats_server)
    for i in range(20):  # one stream block holds them all, kept ones beside erased ones
        await bus.publish(TOPIC, "ada-secret", event(f"a{i}", "ada-secret"), f"a{i}")
        await bus.publish(TOPIC, "bob-kept", event(f"b{i}", "bob-kept"), f"b{i}")
    await bus.publish(TOPIC, "ada-secret", event("poison", "ada-secret"), "poison")
    handled: list[str] = []

    async def handle(message, delivery):
        if message.message_id == "poison":
            raise InvalidArgument("event", "poison")
        handled.append(message.message_id)

    bus.consume(TOPIC, handle, range(PARTITIONS))
    await eventually(lambda: len(handled) == 40)
    await bus.stop_consuming()
    assert (
        await eventually(lambda: messages_mentioning(nats_server.url, ["ada-secret"]))
        and len(await messages_mentioning(nats_server.url, ["ada-secret"])) == 22
    )  # 21 published, the poison one dead-lettered too

    assert await bus.erase_keys(TOPIC, ["ada-secret", "nobody"]) == 21
    assert await bus.erase_dead_letters(TOPIC, ["ada-secret"]) == 1
    assert await bus.erase_keys(TOPIC, ["ada-secret"]) == 0  # again: nothing left, nothing fails
    assert await messages_mentioning(nats_server.url, ["ada-secret"]) == []
    assert len(await messages_mentioning(nats_server.url, ["bob-kept"])) == 20
    await asyncio.sleep(0.2)
    files = [path for path in (nats_server.dir / "store").rglob("*") if path.is_file()]
    assert any(b"bob-kept" in path.read_bytes() for path in files)
    assert not any(b"ada-secret" in path.read_bytes() for path in files)  # overwritten, not only unlinked
    await bus.close()


def test_a_participant_cleans_the_streams_of_what_its_service_produces():
    from mosaic.platform.privacy import stream_cleaned_by

    assert stream_cleaned_by("identity") == (
        topics.EVENTS_RAW,  # ingestion's: identity knows the person's identifiers, its keys
        topics.EVENTS_RESOLVED,
        topics.IDENTITY_MERGED,
        topics.IDENTITY_SPLIT,
    )
    assert stream_cleaned_by("delivery") == (topics.DELIVERY_OUTCOME, topics.DELIVERY_JOBS)
    assert stream_cleaned_by("consent") == ()  # consent's go once the request completes
