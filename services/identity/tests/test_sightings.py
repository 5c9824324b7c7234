"""Sightings written behind and links written once per set of identifiers, on both stores."""

import asyncio
import uuid

import pytest

from identity_service.sightings import Sightings
from identity_service.store import Link


def unique() -> str:
    return uuid.uuid4().hex


async def test_sightings_reach_the_store_on_flush_the_latest_per_identifier(store):
    sightings = Sightings(store)
    device, email = ("device_id", unique()), ("email", f"{unique()}@example.com")
    home = f"p-{unique()}"
    sightings.seen({device: home, email: home}, 2_000)
    sightings.seen({device: home}, 3_000)
    sightings.seen({device: home}, 1_000)  # a late event: not the latest
    assert await store.last_seen([home]) == {}  # nothing written before the flush
    await sightings.flush()
    assert await store.last_seen([home]) == {device: 3_000, email: 2_000}


async def test_a_failed_flush_keeps_the_sightings_for_the_next(store):
    class Failing:
        async def touch_many(self, sightings):
            raise ConnectionError("store down")

    sightings = Sightings(Failing())
    key = ("user_id", unique())
    link = Link(5_000, f"e-{unique()}", (key, ("anonymous_id", unique())))
    home = f"p-{unique()}"
    sightings.seen({key: home}, 5_000)
    sightings.link(link, changed_graph=False)
    with pytest.raises(ConnectionError):
        await sightings.flush()
    sightings.store = store
    await sightings.flush()
    assert await store.last_seen([home]) == {key: 5_000}
    assert link in await store.links(100_000)


async def test_a_set_of_identifiers_is_linked_once_per_process(store):
    marker = unique()
    pair = (("anonymous_id", f"a-{marker}"), ("user_id", f"u-{marker}"))
    sightings = Sightings(store)

    async def mine():
        return [link.event_id for link in await store.links(100_000) if link.event_id.startswith(marker)]

    sightings.link(Link(1_000, f"{marker}-1", pair), changed_graph=True)
    assert await mine() == []
    await sightings.write_owed()
    assert await mine() == [f"{marker}-1"]  # a graph change: written before its event's ack
    sightings.link(Link(2_000, f"{marker}-2", tuple(reversed(pair))), changed_graph=True)  # the same set
    sightings.link(Link(3_000, f"{marker}-3", (*pair, ("email", f"{marker}@example.com"))), changed_graph=False)
    await sightings.write_owed()
    assert await mine() == [f"{marker}-1"]  # no change: written behind
    await sightings.flush()
    assert await mine() == [f"{marker}-1", f"{marker}-3"]


async def test_links_owed_stay_owed_when_their_write_fails(store):
    class Failing:
        async def record_links(self, links):
            raise ConnectionError("store down")

    marker = unique()
    sightings = Sightings(Failing())
    first = Link(1_000, f"{marker}-1", (("anonymous_id", f"a-{marker}"), ("user_id", f"u-{marker}")))
    sightings.link(first, changed_graph=True)
    with pytest.raises(ConnectionError):
        await sightings.write_owed()
    sightings.store = store
    second = Link(2_000, f"{marker}-2", (("anonymous_id", f"b-{marker}"), ("user_id", f"u-{marker}")))
    sightings.link(second, changed_graph=True)
    await sightings.write_owed()
    assert [link for link in await store.links(100_000) if link.event_id.startswith(marker)] == [first, second]


async def test_the_service_stops_with_its_sightings_written(store):
    sightings = Sightings(store, flush_seconds=60)
    stopping = asyncio.Event()
    running = asyncio.create_task(sightings.run(stopping))
    key = ("device_id", unique())
    home = f"p-{unique()}"
    sightings.seen({key: home}, 7_000)
    stopping.set()
    await running
    assert await store.last_seen([home]) == {key: 7_000}
