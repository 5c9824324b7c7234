"""Consent changes from events: Segment's consent preferences (consumer of `events.resolved`),
and people moved by identity's merges and splits (IdentityChanges, of `identity.merged`/`split`).

Segment's consent management sends the person's preferences with every event, as
`context.consent.categoryPreferences` (`{"Advertising": true, "C0002": false}`), and sends a
`Segment Consent Preference Updated` track event when the person changes them. A category
names a purpose through `MOSAIC_CONSENT_CATEGORIES` (`C0004=advertising,...`), or is the
purpose's own name (case and spaces aside); other categories are ignored.

The update event is recorded whole (it is the decision); any other event records only what
differs from the person's current state and is newer than it, so the ledger holds changes,
not a copy of every event. `context.consent.gpc: true` records the Global Privacy Control
signal. Each entry's change id is derived from the event's message id, so a redelivered event
records and announces nothing twice.

An event resolved to a person before their erasure may be read after consent's part of it (the
profile service drops it, consent reads the stream on its own). The erasure keeps a tombstone
per profile id (ConsentStore.record_erasures) before it removes the ledger; entries to record
are checked against it before they are written, and again after, for an erasure running
meanwhile: either the second read sees the tombstone, and the entries and their notices are
removed here, or the write came before the tombstone and the erasure removes it. Only events
that change the ledger pay the two reads; the many that restate the person's consent pay none.
"""

from __future__ import annotations

import base64
import hashlib
import logging

from google.protobuf import struct_pb2

from consent_service.cache import ConsentCache
from consent_service.ledger import Ledger
from consent_service.outbox import Relay
from consent_service.store import micros, timestamp
from mosaic.consent.v1 import consent_pb2
from mosaic.events.v1 import event_pb2, resolved_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Delivery
from mosaic.platform.consent import Policy

log = logging.getLogger("consent.events")
UPDATED = "Segment Consent Preference Updated"


def _change_id(message_id: str, purpose: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(f"event\0{message_id}\0{purpose}".encode()).digest()[:18]).decode()


class ConsentEvents:
    def __init__(self, ledger: Ledger, cache: ConsentCache, relay: Relay, policy: Policy) -> None:
        self.ledger = ledger
        self.cache = cache
        self.relay = relay
        self.policy = policy
        self.ignored_categories = 0
        self.erased_dropped = 0  # events whose consent named an erased person

    async def __call__(self, resolved: resolved_pb2.ResolvedEvent, delivery: Delivery) -> None:
        event = resolved.event
        consent = event.context["consent"] if "consent" in event.context else None
        if not isinstance(consent, struct_pb2.Struct) or not resolved.profile_id:
            return  # the common case: nothing about consent, no store read
        explicit = event.type == event_pb2.EVENT_TYPE_TRACK and event.event == UPDATED
        preferences = consent["categoryPreferences"] if "categoryPreferences" in consent else None
        wanted: dict[str, bool] = {}
        if isinstance(preferences, struct_pb2.Struct):
            for category, value in preferences.items():
                purpose = self.policy.purpose_of(category)
                if purpose is None or not isinstance(value, bool):
                    self.ignored_categories += 1
                    continue
                wanted[purpose] = value
        gpc = "gpc" in consent and consent["gpc"] is True
        if not wanted and not gpc:
            return
        when = micros(event.timestamp if event.HasField("timestamp") else event.received_at)
        view = await self.cache.get(resolved.profile_id)
        decisions = []
        for purpose, granted in wanted.items():
            latest = view.latest.get(purpose)
            if not explicit and latest is not None and (latest.granted == granted or micros(latest.decided_at) >= when):
                continue
            decisions.append(
                self.ledger.normalise(
                    consent_pb2.ConsentDecision(
                        profile_id=resolved.profile_id,
                        purpose=purpose,
                        granted=granted,
                        decided_at=timestamp(when),
                        source=f"event:{event.source_id}" if event.source_id else "event",
                        actor="person",
                        change_id=_change_id(event.message_id, purpose),
                        proof=consent_pb2.ConsentProof(text=f"{event.event or 'event'} {event.message_id}"),
                    )
                )
            )
        if gpc:
            for denial in self.ledger.gpc_denials(resolved.profile_id, "event:gpc", "person", when):
                latest = view.latest.get(denial.purpose)
                if latest is None or latest.granted or explicit:
                    denial.change_id = _change_id(event.message_id, "gpc:" + denial.purpose)
                    decisions.append(denial)
        if not decisions:
            return
        store = self.ledger.store
        if await store.erased([resolved.profile_id]):
            self.erased_dropped += 1
            return
        profiles = list(dict.fromkeys([resolved.profile_id, *await self.ledger.record(decisions)]))
        if erased := await store.erased(profiles):
            await self._undo(profiles, erased)
            return
        self.cache.drop(profiles)
        self.relay.kick()

    async def _undo(self, profiles: list[str], erased: set[str]) -> None:
        """The person was erased while their entries were written: the entries go, and their
        notices, published first so that no relay publishes one later (a relay that read it
        already publishes it again under the same message id, which JetStream drops)."""
        self.erased_dropped += 1
        await self.ledger.store.erase_profiles(profiles)
        self.cache.drop(profiles)
        await self.relay.drain()
        await self.relay.bus.erase_keys(topics.CONSENT_CHANGED, profiles)
        log.info("consent of an erased person dropped", extra={"fields": {"profiles": len(erased)}})


class IdentityChanges:
    """The consumer of identity.merged and identity.split: consent follows the person."""

    def __init__(self, ledger: Ledger, relay: Relay) -> None:
        self.ledger = ledger
        self.relay = relay

    async def merged(self, merge, delivery: Delivery) -> None:
        if await self.ledger.merged(merge):
            self.relay.kick()

    async def split(self, split, delivery: Delivery) -> None:
        if await self.ledger.split(split):
            self.relay.kick()
