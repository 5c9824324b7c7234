"""The identity store's contract, on SQLite and on Cassandra."""

import asyncio
import uuid

import pytest

from identity_service.store import open_store


@pytest.fixture
async def store(store_settings):
    store = await open_store(store_settings)
    yield store
    await store.close()


async def test_an_unknown_identifier_has_no_owner(store):
    assert await store.owner("email", f"{uuid.uuid4()}@example.com") is None


async def test_the_first_claim_wins_and_later_claims_see_the_owner(store):
    value = str(uuid.uuid4())
    assert await store.claim("user_id", value, "p-1") == "p-1"
    assert await store.claim("user_id", value, "p-2") == "p-1"
    assert await store.owner("user_id", value) == "p-1"


async def test_racing_claims_agree_on_one_owner(store):
    value = str(uuid.uuid4())
    winners = await asyncio.gather(*(store.claim("anonymous_id", value, f"p-{i}") for i in range(8)))
    assert len(set(winners)) == 1
    assert await store.owner("anonymous_id", value) == winners[0]


async def test_identifier_types_are_separate_namespaces(store):
    value = str(uuid.uuid4())
    await store.claim("user_id", value, "p-1")
    assert await store.owner("anonymous_id", value) is None
