"""Tombstones of erased identifiers, so that identity never makes a new profile of an erased person.

Ingestion suppresses a person's identifiers only once identity's receipt of the erasure reaches
it, so an event naming one of them (the device's anonymous id) may still come after identity
did its part. It finds no claim, and without this would be given a new profile id. The erasure
writes a tombstone per identifier of the person before their claims go. The resolver reads the
tombstones of identifiers it has no claim of, and only those (the path that creates a claim: a
known person's events pay nothing): before claiming them, so an event coming after the erasure
is dropped having made nothing, and again once they are claimed, undoing the claims on a hit.

The second read closes the race with an erasure running meanwhile. Claim first, read second,
and the erasure's tombstones first, claims removed second, then the claims made since removed:
whatever the interleaving, either the resolver's second read sees the tombstone, or its claim
came before the tombstone and the erasure's last pass removes it.

A tombstone is an HMAC of `type:value` (`mosaic.platform.audit.keyed`, as the audit log keys
its subjects) under a key kept in identity's own store, made by the first replica that needs
it: the tombstones are useless without their key, so both live, and are backed up, together
(the deployment's audit key may be set anew by an operator, which would void them all). The
store can tell whether an identifier was erased, not who was. Kept for good: nothing in Mosaic
lifts a suppression (see the README, "Privacy requests"). The erased profile ids get one each too
(`profile_erased`), so a root whose row is gone is never adopted again (see Resolver.lock_all).

`ErasedProfiles` is a replica's memory of the people being erased, heard from every erasure
request (Bus.listen): from then on, this replica resolves nothing to them and writes no sighting
of them, whichever replica runs the erasure (see the README, "What arrives after the erasure").
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from identity_service.store import IdentityStore, Key
from mosaic.platform.audit import keyed
from mosaic.platform.lru import Lru

KEY_SETTING = "erasure_key"
PROFILE = "\0profile"  # the type of a profile id's tombstone: no identifier type can be it


class Erasures:
    def __init__(self, store: IdentityStore) -> None:
        self.store = store
        self._key: str | None = None

    async def _hashes(self, keys: Iterable[Key]) -> dict[str, Key]:
        if self._key is None:
            self._key = await self.store.setting(KEY_SETTING, secrets.token_hex(32))
        return {keyed(self._key, f"{id_type}:{value}"): (id_type, value) for id_type, value in keys}

    async def record(self, keys: Iterable[Key], at: int) -> None:
        """Keep a tombstone for each identifier (before its claim goes)."""
        hashes = await self._hashes(keys)
        if hashes:
            await self.store.record_erasures(sorted(hashes), at)

    async def erased(self, keys: Iterable[Key]) -> list[Key]:
        """Those of `keys` whose person was erased."""
        hashes = await self._hashes(keys)
        if not hashes:
            return []
        return sorted(hashes[h] for h in await self.store.erased(sorted(hashes)))

    async def profile_erased(self, profile_id: str) -> bool:
        return bool(await self.erased([(PROFILE, profile_id)]))


class ErasedProfiles:
    """The profile ids of the people this replica heard being erased (bounded, the oldest out:
    by then the erasure is long done and the store holds nothing of them to resolve by)."""

    def __init__(self, size: int = 100_000) -> None:
        self._ids: Lru[str, bool] = Lru(size)

    def add(self, profile_ids: Iterable[str]) -> None:
        for profile_id in profile_ids:
            self._ids.put(profile_id, True)

    def __contains__(self, profile_id: object) -> bool:
        return profile_id in self._ids

    def __bool__(self) -> bool:
        return len(self._ids) > 0
