"""Consent of an erased person read from events.resolved, on each store and a real nats-server:
an event resolved to the person before the erasure, read after consent's part (or while it
runs), leaves no ledger entry and no notice."""

from __future__ import annotations

import uuid

import pytest

from consent_service.cache import ConsentCache
from consent_service.events import ConsentEvents
from consent_service.ledger import Ledger
from consent_service.outbox import Relay
from consent_service.privacy import ConsentParticipant
from mosaic.consent.v1 import privacy_pb2
from mosaic.events.v1 import event_pb2, privacy_request_pb2, resolved_pb2
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.consent import Policy
from mosaic.testing.plugin import eventually
from mosaic.testing.scan import messages_mentioning


@pytest.fixture
async def consent(store, nats_server):
    """Consent's consumer of events.resolved and its privacy participant on one store."""
    bus = await Bus.connect(nats_server.url, "consent", 4)
    await bus.ensure_streams()
    policy = Policy.from_env({"MOSAIC_CONSENT_CATEGORIES": "C0002=analytics"})
    ledger = Ledger(store, policy.purposes, policy.jurisdiction)
    cache = ConsentCache(ledger.view, 100, 60.0)
    relay = Relay(store, bus)
    yield ConsentEvents(ledger, cache, relay, policy), ConsentParticipant(store, cache, relay)
    await bus.close()


def carrying(profile_id: str, message_id: str, granted: bool) -> resolved_pb2.ResolvedEvent:
    e = event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, event="Page Viewed", message_id=message_id, user_id="ada")
    e.timestamp.GetCurrentTime()
    e.context.update({"consent": {"categoryPreferences": {"C0002": granted}}})
    return resolved_pb2.ResolvedEvent(profile_id=profile_id, event=e)


def erasure(profile_id: str) -> privacy_request_pb2.PrivacyRequested:
    return privacy_request_pb2.PrivacyRequested(
        request_id=f"erase-{profile_id}", kind=privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE, person_id=profile_id
    )


DELIVERY = Delivery("events.resolved.0.x", 0, 1, 1, "m")


async def test_an_event_read_after_the_erasure_records_nothing_of_the_person(consent, store):
    events, participant = consent
    ada = f"p-{uuid.uuid4()}"
    await events(carrying(ada, "m-1", True), DELIVERY)
    assert [d.granted for d in await store.ledger([ada])] == [True]
    await events.relay.drain()

    await participant.erase(erasure(ada))
    await events(carrying(ada, "m-2", False), DELIVERY)  # resolved before, read after

    assert await store.ledger([ada]) == []
    assert not [e for e in await store.outbox_pending() if e.message_id.startswith("consent:")]
    assert events.erased_dropped == 1


async def test_an_event_whose_entries_are_written_while_the_erasure_runs_leaves_none(consent, store, nats_server):
    events, participant = consent
    bea = f"p-{uuid.uuid4()}"
    await events(carrying(bea, "b-1", True), DELIVERY)
    await events.relay.drain()
    # The erasure runs just after the event's first look at the tombstones: too late for that
    # look, too early to remove what the event writes next.
    events.ledger.store = ErasureAfterFirstLook(store, lambda: participant.erase(erasure(bea)))

    await events(carrying(bea, "b-2", False), DELIVERY)

    assert await store.ledger([bea]) == []
    assert await store.outbox_pending() == []
    assert events.erased_dropped == 1
    # Nor is any notice of the person left in the streams (the relay published, then erased them).
    await eventually(lambda: _none_left(nats_server.url, [bea]))


async def _none_left(nats_url: str, needles: list[str]) -> bool:
    return await messages_mentioning(nats_url, needles) == []


class ErasureAfterFirstLook:
    """A store that runs the erasure once, right after its first tombstone read (an interleaving)."""

    def __init__(self, store, erase) -> None:
        self._store = store
        self._erase = erase

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    async def erased(self, profile_ids):
        found = await self._store.erased(profile_ids)
        erase, self._erase = self._erase, None
        if erase is not None:
            await erase()
        return found
