"""The consent store: the ledger, who belongs to which person, merges, and the outbox.

The ledger is append-only and keyed by the profile a decision was recorded on, (profile,
purpose, decided_at): recording the same decision twice is a no-op and a decision that arrives
late never hides a newer one. A person is the survivor of its merges: `heads` maps a merged
profile to its person and `members` lists a person's profiles, so a person's state is the latest
decision per purpose over the ledgers of all its profiles, and a split only moves rows of the
two small maps back (the ledger is never rewritten). Each merge keeps the moves it made, so
undoing it restores exactly what it changed.

A grant with an expires_at is indexed by that time in the same write, for the sweeper that
appends its expiry.

Every write that must be announced stores its `consent.changed` message in the outbox in the
same atomic write (one SQLite transaction, one logged Cassandra batch); a relay publishes it.
"""

from __future__ import annotations

from typing import Protocol

from consent_service.store.model import Expiry, MergeRecord, OutboxEntry
from mosaic.consent.v1 import consent_pb2, privacy_pb2


class ConsentStore(Protocol):
    async def append(self, decisions: list[consent_pb2.ConsentDecision], outbox: list[OutboxEntry]) -> None:
        """Append ledger entries and their outbox messages atomically; an entry already there is kept."""

    async def ledger(self, profile_ids: list[str], limit: int = 10_000) -> list[consent_pb2.ConsentDecision]:
        """Every entry recorded on any of `profile_ids`, oldest first (then by purpose, profile)."""

    async def ledger_profiles(self, cursor: str, limit: int = 500) -> tuple[list[str], str]:
        """A page of the profile ids that have ledger entries, from `cursor` ("" for the first
        page); the cursor of the next page, "" after the last."""

    async def head(self, profile_id: str) -> str:
        """The person a profile belongs to: its survivor, or itself."""

    async def members(self, head: str) -> list[str]:
        """Every profile of the person, the head first."""

    async def merge_record(self, merge_id: str) -> MergeRecord | None: ...
    async def apply_merge(self, record: MergeRecord, outbox: list[OutboxEntry]) -> None:
        """Point every moved profile at the survivor and keep the record, atomically."""

    async def apply_split(self, record: MergeRecord, outbox: list[OutboxEntry]) -> None:
        """Point every moved profile back at its previous head and mark the record split, atomically."""

    async def put_request(self, request: privacy_pb2.PrivacyRequest, outbox: list[OutboxEntry]) -> bool:
        """Store a new privacy request (without receipts) and its messages; False if the id exists."""

    async def request(self, request_id: str) -> privacy_pb2.PrivacyRequest | None:
        """The request with its receipts."""

    async def requests(self, limit: int = 10_000) -> list[privacy_pb2.PrivacyRequest]:
        """Every request, without receipts."""

    async def complete_request(self, request: privacy_pb2.PrivacyRequest) -> None:
        """Store the request's state, completion time and export deletion (receipts are kept apart)."""

    async def put_receipt(
        self,
        request_id: str,
        participant: str,
        part: int,
        summary: privacy_pb2.PrivacyReceiptSummary | None,
        export_json: str,
        outbox: list[OutboxEntry],
    ) -> None:
        """Store one part of a participant's answer (the summary comes with the final part)."""

    async def export_parts(self, request_id: str) -> list[tuple[str, int, str]]:
        """(participant, part, JSON) of an export, in order."""

    async def delete_export(self, request_id: str) -> None:
        """Remove an export's document parts (its retention is over)."""

    async def record_erasures(self, profile_ids: list[str]) -> None:
        """Keep a tombstone per erased profile id (a hash of it), for good: an event resolved to
        one before the profile service dropped it records nothing (consent_service.events)."""

    async def erased(self, profile_ids: list[str]) -> set[str]:
        """Those of `profile_ids` with a tombstone."""

    async def erase_profiles(self, profile_ids: list[str]) -> dict[str, int]:
        """Remove every ledger entry, person link and merge record of the profiles; rows removed by table."""

    async def due_expiries(self, now_us: int, limit: int = 500) -> list[Expiry]:
        """Grants whose expires_at is at or before `now_us` and not yet swept (appended with them)."""

    async def expiry_done(self, expiries: list[Expiry]) -> None: ...
    async def outbox_pending(self, limit: int = 500) -> list[OutboxEntry]: ...
    async def outbox_done(self, message_ids: list[str]) -> None: ...
    async def close(self) -> None: ...
