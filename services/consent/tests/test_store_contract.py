"""The consent ledger's contract, on SQLite and on Cassandra."""

import uuid

import pytest
from google.protobuf import timestamp_pb2

from mosaic.consent.v1 import consent_pb2
from consent_service.store import open_store


@pytest.fixture
async def store(store_settings):
    store = await open_store(store_settings)
    yield store
    await store.close()


def decision(pid, purpose, granted, seconds) -> consent_pb2.ConsentDecision:
    return consent_pb2.ConsentDecision(profile_id=pid, purpose=purpose, granted=granted, source="api",
                                       decided_at=timestamp_pb2.Timestamp(seconds=seconds, nanos=123_000_000))


async def test_the_latest_decision_wins_even_when_recorded_first(store):
    pid = str(uuid.uuid4())
    await store.record(decision(pid, "marketing", False, 200))
    await store.record(decision(pid, "marketing", True, 100))  # an older decision arriving late
    latest = await store.latest(pid, "marketing")
    assert latest.granted is False and latest.decided_at.seconds == 200
    assert latest.decided_at.nanos == 123_000_000


async def test_history_keeps_every_decision_oldest_first_and_once(store):
    pid = str(uuid.uuid4())
    await store.record(decision(pid, "marketing", True, 100))
    await store.record(decision(pid, "marketing", True, 100))
    await store.record(decision(pid, "analytics", False, 150))
    history = await store.history(pid)
    assert [(d.purpose, d.decided_at.seconds) for d in history] == [("marketing", 100), ("analytics", 150)]
    assert await store.latest(pid, "advertising") is None
