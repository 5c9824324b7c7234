"""The suppression list: people who asked to be erased; their events are dropped and counted.

The list arrives on `suppression.changed` (from the consent service's erasure requests). Only
an HMAC-SHA-256 of each identifier, under a salt of this deployment, is kept: the list can
tell whether an event names a suppressed person, but not who is on it. Every replica keeps
the whole list in memory, applies the changes it consumes at once, and reads the store again
every MOSAIC_SUPPRESSION_REFRESH_SECONDS for the changes other replicas consumed. A change,
which names the person in clear, is erased from the stream once its hashes are stored.

An erasure also deletes the quarantined events that name the person, found through the
quarantine's index of the same hashes. Another replica may quarantine such an event until it
learns of the erasure, so each replica erases again for the hashes its refresh brings.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Collection, Iterator

from google.protobuf import struct_pb2
from opentelemetry import trace

from ingestion_service import transforms
from ingestion_service.store import IngestionStore
from mosaic.events.v1 import event_pb2, suppression_changed_pb2
from mosaic.platform.bus import Delivery
from mosaic.platform.errors import InvalidArgument, Unavailable

log = logging.getLogger("ingestion.suppression")
TYPES = ("user_id", "anonymous_id", "email", "phone")
# Where an event may name a person's e-mail address or phone number.
_CONTACTS = (("traits", "email"), ("traits", "phone"), ("properties", "email"), ("properties", "phone"))


def normalise(kind: str, value: str) -> str | None:
    """The form an identifier is hashed in, so that `Ada@Example.com ` and `ada@example.com` match."""
    if kind == "email":
        return transforms.normalise_email(value) or None
    if kind == "phone":
        try:
            return transforms.normalise_phone(value)
        except ValueError:
            return None
    return value or None


def identifiers(event: event_pb2.Event) -> Iterator[tuple[str, str]]:
    """Every identifier an event names, as (type, value)."""
    if event.user_id:
        yield "user_id", event.user_id
    if event.anonymous_id:
        yield "anonymous_id", event.anonymous_id
    if event.previous_id:
        yield "user_id", event.previous_id  # an alias's previous id may be either kind
        yield "anonymous_id", event.previous_id
    context_traits = event.context["traits"] if "traits" in event.context else None
    for root, kind in _CONTACTS:
        struct = getattr(event, root)
        for holder in (struct, context_traits) if root == "traits" else (struct,):
            if isinstance(holder, struct_pb2.Struct) and kind in holder and isinstance(value := holder[kind], str):
                yield kind, value


class SuppressionList:
    """The salted hashes of suppressed identifiers, and how many events they dropped."""

    def __init__(self, store: IngestionStore, salt: str) -> None:
        self.store = store
        self._salt = salt.encode()
        self._hashes: set[str] = set()
        self._unerased: set[str] = set()  # new to this replica, their quarantine not yet erased
        self.dropped = 0

    def hash(self, kind: str, value: str) -> str | None:
        normal = normalise(kind, value)
        if normal is None:
            return None
        return hmac.new(self._salt, f"{kind}:{normal}".encode(), hashlib.sha256).hexdigest()

    def __len__(self) -> int:
        return len(self._hashes)

    def people(self, event: event_pb2.Event) -> list[str]:
        """The hashes of every identifier the event names: how the quarantine indexes it."""
        return list({digest for kind, value in identifiers(event) if (digest := self.hash(kind, value))})

    def suppressed(self, people: Collection[str]) -> list[str]:
        """Those of `people` (hashes) on the list."""
        return [person for person in people if person in self._hashes]

    def matches(self, event: event_pb2.Event) -> bool:
        """Whether the event names a suppressed person; counts it when it does."""
        if not self._hashes:
            return False  # the common case costs nothing
        for kind, value in identifiers(event):
            if self.hash(kind, value) in self._hashes:
                self.dropped += 1
                trace.get_current_span().add_event("suppressed event dropped")
                return True
        return False

    async def load(self) -> None:
        self._hashes = await self.store.suppressed()

    async def refresh(self) -> None:
        """Read the list again, and erase the quarantine for the hashes new to this replica."""
        stored = await self.store.suppressed()
        self._unerased |= stored - self._hashes
        self._hashes = stored
        await self.erase_quarantined(list(self._unerased))
        self._unerased.clear()

    async def refresh_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Unavailable as error:
                log.warning("suppression list not refreshed: %s", error)

    async def erase_quarantined(self, people: Collection[str]) -> int:
        """Delete the quarantined events that name any of `people` (suppressed hashes), and
        their index entries; returns how many events were deleted."""
        erased = 0
        for person in people:
            # Every entry read is unlinked, so this ends, whatever the backend's page size.
            while links := await self.store.quarantined_naming(person):
                for source_id, message_id in links:
                    kept = await self.store.get_quarantined(source_id, message_id)
                    if kept is not None and self.suppressed(self.people(kept.event)):
                        await self.store.delete_quarantined(source_id, message_id)
                        erased += 1
                    await self.store.unlink_quarantined(person, source_id, message_id)
        return erased

    async def __call__(self, change: suppression_changed_pb2.SuppressionChanged, delivery: Delivery) -> None:
        """The bus handler of `suppression.changed`: stored first, then in effect here."""
        hashes = []
        for index, identifier in enumerate(change.identifiers):
            if identifier.type not in TYPES:
                raise InvalidArgument(f"identifiers[{index}].type", f"must be one of {', '.join(TYPES)}")
            digest = self.hash(identifier.type, identifier.value)
            if digest is not None:
                hashes.append(digest)
        erased = 0
        if change.lifted:
            await self.store.remove_suppressed(hashes)
            self._hashes.difference_update(hashes)
        else:
            await self.store.add_suppressed(hashes)
            self._hashes.update(hashes)  # first: an event quarantined from now on checks the list
            erased = await self.erase_quarantined(hashes)
        log.info(
            "suppression list changed",
            extra={
                "fields": {
                    "request_id": change.request_id,
                    "identifiers": len(hashes),
                    "lifted": change.lifted,
                    "quarantined_erased": erased,
                }
            },
        )
