"""The identity graph's storage: one Protocol, on Cassandra and on SQLite.

Tables, and who may write them (never LWT and plain writes on the same rows):

- claims: identifier → its home profile. Written once, by LWT (`IF NOT EXISTS`); never
  changed, so it is also safe to cache for ever; removed only for an erased person, by LWT too
  (`IF profile_id = ?`).
- profiles: one row per profile: first sighting, `merged_into` (empty for a root), the lock
  (holder, lease) and the profiles it must never be merged with again. Every write is an LWT
  conditioned on the lock holder or on `merged_into`: this row is the single writer of its
  component's decisions.
- members (home profile → its identifiers), children (survivor → merged profiles), merges,
  unlinked, last-seen, links (the history the dry run replays), outbox: plain writes, each
  idempotent (keyed by ids that a replay computes again).
- rules: one row, written by LWT on its version (compare-and-set).
- erasures (a keyed hash per erased identifier, plain writes, never changed) and settings
  (the key of those hashes, written once by LWT).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from identity_service.store.model import Claim, Key, Link, Member, OutboxEntry, ProfileRow
from mosaic.identity.v1 import identity_pb2


class IdentityStore(Protocol):
    db: Any  # the backend (Repository.db), for the privacy participant's erasure statements

    # claims
    async def claims(self, keys: Sequence[Key]) -> dict[Key, Claim]: ...
    async def claim(self, key: Key, claim: Claim) -> Claim:
        """Claim the identifier unless claimed; returns the claim that holds."""

    async def unclaim(self, key: Key, profile_id: str) -> bool:
        """Remove the identifier's claim if `profile_id` holds it (an erasure's, or a claim of
        an erased identifier undone); False when it holds none."""

    # erasures: tombstones of erased identifiers (keyed hashes, see erasures.py), kept for good
    async def record_erasures(self, hashes: Sequence[str], at: int) -> None: ...
    async def erased(self, hashes: Sequence[str]) -> set[str]:
        """Those of `hashes` with a tombstone."""

    async def setting(self, name: str, proposed: str) -> str:
        """The stored value of a setting; `proposed` is stored first when there is none."""

    # profiles (every write conditional)
    async def profiles(self, profile_ids: Sequence[str]) -> dict[str, ProfileRow]: ...
    async def create_locked(
        self, profile_id: str, created_at: int, event_id: str, holder: str, lease_until: int
    ) -> bool: ...
    async def lock(self, profile_id: str, holder: str, now: int, lease_until: int) -> tuple[bool, str | None]:
        """Take the lock of a root whose lease ran out.

        Returns (True, "") when taken; else (False, merged_into), merged_into being "" when
        another holder has it and None when the profile has no row.
        """

    async def delete_locked(self, profile_id: str, holder: str) -> bool:
        """Remove the row of a profile locked by `holder` (one an erased identifier created)."""

    async def unlock(self, profile_id: str, holder: str) -> None: ...
    async def merge_into(self, profile_id: str, survivor: str, merge_id: str, holder: str) -> bool:
        """Fold a root locked by `holder` into `survivor`, releasing its lock."""

    async def unmerge(self, profile_id: str, survivor: str, never_merge: str) -> bool:
        """Make a profile merged into `survivor` a root again, never to merge with it again."""

    # plain, idempotent records
    async def members(self, profile_ids: Sequence[str]) -> dict[str, list[Member]]: ...
    async def add_members(self, profile_id: str, members: Sequence[Member]) -> None: ...
    async def remove_member(self, profile_id: str, key: Key) -> None: ...
    async def children(self, profile_id: str) -> list[str]: ...
    async def add_child(self, profile_id: str, child: str) -> None: ...
    async def remove_child(self, profile_id: str, child: str) -> None: ...
    async def save_merge(self, record: identity_pb2.MergeRecord) -> None: ...
    async def merge(self, merge_id: str) -> identity_pb2.MergeRecord | None: ...
    async def merges_of(self, profile_id: str) -> list[identity_pb2.MergeRecord]: ...
    async def save_unlinked(self, records: Sequence[identity_pb2.Unlinked]) -> None: ...
    async def unlinked_of(self, profile_id: str, limit: int = 200) -> list[identity_pb2.Unlinked]: ...
    async def touch_many(self, sightings: Mapping[Key, tuple[str, int]]) -> None:
        """Record sightings (identifier → its home profile, event time); the latest event time
        wins whatever the arrival order."""

    async def forget_sightings(self, homes: Sequence[str]) -> None:
        """Remove every sighting whose home is one of `homes` (a person erased)."""

    async def last_seen(self, homes: Sequence[str]) -> dict[Key, int]:
        """The last sighting of every identifier whose home is one of `homes`."""

    async def record_links(self, links: Sequence[Link]) -> None: ...
    async def links(self, limit: int) -> list[Link]:
        """Recorded links in event-time order, at most `limit`."""

    async def outbox_put(self, entry: OutboxEntry) -> None: ...
    async def outbox_pending(self, limit: int = 100) -> list[OutboxEntry]: ...
    async def outbox_done(self, message_id: str) -> None: ...

    # rules
    async def load_rules(self) -> identity_pb2.IdentityRules | None: ...
    async def save_rules(self, rules: identity_pb2.IdentityRules, expected_version: int) -> bool:
        """Store `rules` (whose version is expected_version + 1) if the stored version is expected."""

    async def close(self) -> None: ...
