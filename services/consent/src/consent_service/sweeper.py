"""What time does to consent and privacy requests, swept on an interval by every replica.

- A grant with an `expires_at` lapses then. CheckConsent already answers `expired` from that
  moment; the sweeper appends the CONSENT_CHANGE_EXPIRE entry to the ledger, so the history
  shows it, and announces it on `consent.changed` like any change. Only a grant that is still
  the person's latest word on the purpose expires. Replicas may sweep the same grant: the
  entry's key and change id are derived from it, so it is recorded once.
- A completed export's document is personal data held only to be handed over: it is deleted
  `export_days` after completion (the request keeps its receipts and says when).
- A privacy request that no participant answered for a while is announced again: Cassandra
  stores a new request (a lightweight transaction) and its announcement in two writes, and a
  crash between them would leave it unannounced. Participants and receipts are idempotent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Callable

from consent_service.cache import ConsentCache
from consent_service.ledger import Ledger, now_us
from consent_service.outbox import Relay
from consent_service.privacy import _announcement
from consent_service.store import ConsentStore, Expiry, micros, timestamp
from mosaic.consent.v1 import consent_pb2, privacy_pb2
from mosaic.platform.errors import InvalidArgument

log = logging.getLogger("consent.sweeper")


def _change_id(expiry: Expiry) -> str:
    key = f"expiry\0{expiry.profile_id}\0{expiry.purpose}\0{expiry.expires_us}".encode()
    return base64.urlsafe_b64encode(hashlib.sha256(key).digest()[:18]).decode()


class Sweeper:
    def __init__(
        self,
        store: ConsentStore,
        ledger: Ledger,
        cache: ConsentCache,
        relay: Relay,
        announce_after: float = 600.0,
        export_days: float = 30.0,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.cache = cache
        self.relay = relay
        self.announce_after_us = int(announce_after * 1e6)
        self.export_keep_us = int(export_days * 86_400 * 1e6)
        self.clock = clock

    async def expire(self) -> int:
        """Append the expiry of every lapsed grant still in force; returns how many."""
        due = await self.store.due_expiries(self.clock())
        expired = 0
        for expiry in due:
            view = await self.ledger.view(expiry.profile_id)
            latest = view.latest.get(expiry.purpose)
            if (
                latest is None
                or latest.profile_id != expiry.profile_id
                or not latest.granted
                or micros(latest.expires_at) != expiry.expires_us
            ):
                continue  # decided again since: nothing lapses
            try:
                entry = self.ledger.normalise(
                    consent_pb2.ConsentDecision(
                        profile_id=expiry.profile_id,
                        purpose=expiry.purpose,
                        change=consent_pb2.CONSENT_CHANGE_EXPIRE,
                        decided_at=timestamp(expiry.expires_us),
                        source="expiry",
                        actor="consent",
                        change_id=_change_id(expiry),
                        legal_basis=latest.legal_basis,
                    )
                )
            except InvalidArgument as error:  # a purpose no longer configured
                log.warning("expiry not recorded: %s", error)
                continue
            self.cache.drop(await self.ledger.record([entry]))
            expired += 1
        if due:
            await self.store.expiry_done(due)
            self.relay.kick()
        return expired

    async def announce_again(self) -> int:
        """Announce again the pending requests nobody answered within `announce_after`."""
        horizon = self.clock() - self.announce_after_us
        quiet = [
            r
            for r in await self.store.requests()
            if r.state == privacy_pb2.PRIVACY_REQUEST_STATE_PENDING
            and micros(r.requested_at) <= horizon
            and (stored := await self.store.request(r.request_id)) is not None
            and not stored.receipts
        ]
        if quiet:
            await self.store.append([], [_announcement(r) for r in quiet])
            self.relay.kick()
        return len(quiet)

    async def delete_old_exports(self) -> int:
        """Delete the documents of exports completed more than `export_days` ago; returns how many."""
        horizon = self.clock() - self.export_keep_us
        old = [
            r
            for r in await self.store.requests()
            if r.kind == privacy_pb2.PRIVACY_REQUEST_KIND_EXPORT
            and r.state == privacy_pb2.PRIVACY_REQUEST_STATE_COMPLETED
            and not r.HasField("export_deleted_at")
            and micros(r.completed_at) <= horizon
        ]
        for request in old:
            await self.store.delete_export(request.request_id)
            request.export_deleted_at.CopyFrom(timestamp(self.clock()))
            await self.store.complete_request(request)
        return len(old)

    async def run(self, stopping: asyncio.Event, interval: float = 30.0) -> None:
        while not stopping.is_set():
            for work in (self.expire, self.announce_again, self.delete_old_exports):
                try:
                    await work()
                except Exception:  # noqa: BLE001 - logged; the next round tries again
                    log.exception("sweep failed")
            try:
                await asyncio.wait_for(stopping.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass
