"""The outbox relay, on each store and a real nats-server: a person's consent.changed notices
are published in the order they were written, whatever their message ids (on Cassandra the
outbox is sharded, and a shard is read in its clustering order)."""

from __future__ import annotations

import uuid

from consent_service.outbox import Relay
from consent_service.store import OutboxEntry
from mosaic.events.v1 import consent_changed_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.testing.plugin import eventually


def notice(person: str, n: int) -> OutboxEntry:
    message = consent_changed_pb2.ConsentChanged(person_id=person, cause=f"change {n}")
    # Random ids: neither their text nor their hash follows the order of writing.
    return OutboxEntry(f"consent:{uuid.uuid4()}", topics.CONSENT_CHANGED.name, person, message.SerializeToString())


async def test_a_persons_notices_are_published_in_the_order_they_were_written(store, nats_server):
    bus = await Bus.connect(nats_server.url, "consent", 4)
    try:
        await bus.ensure_streams()
        published: list[tuple[str, str]] = []

        async def on_message(msg) -> None:
            changed = consent_changed_pb2.ConsentChanged.FromString(msg.data)
            published.append((changed.person_id, changed.cause))

        await bus._nc.subscribe(topics.CONSENT_CHANGED.wildcard, cb=on_message)
        people = [str(uuid.uuid4()) for _ in range(3)]
        for n in range(30):  # each its own write, people interleaved, as decisions come
            await store.append([], [notice(people[n % 3], n)])
        await store.append([], [notice(people[0], 30), notice(people[0], 31)])  # two in one write
        relay = Relay(store, bus)
        assert await relay.drain() == 32
        await eventually(lambda: len(published) == 32)
        for index, person in enumerate(people):
            written = [f"change {n}" for n in range(index, 30, 3)] + (["change 30", "change 31"] if index == 0 else [])
            assert [cause for who, cause in published if who == person] == written
        assert await store.outbox_pending() == []
    finally:
        await bus.close()
