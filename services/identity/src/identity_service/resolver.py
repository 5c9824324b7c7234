"""Resolution: which profile an event's identifiers belong to, claiming the new ones.

No match makes a new profile; a match joins it. When identifiers point at several profiles,
the event joins the profile of its highest-priority identifier and the others stay where they
are (merging profiles comes with the identity-rules work). Resolution is idempotent: replaying
an event finds the claims it made and resolves the same way.
"""

from __future__ import annotations

import uuid

from mosaic.identity.v1 import identity_pb2
from identity_service.store import IdentityStore


class Resolver:
    def __init__(self, store: IdentityStore) -> None:
        self.store = store

    async def resolve(self, identifiers: list[identity_pb2.Identifier]) -> str:
        """The profile id for an event's identifiers (highest priority first); claims the unclaimed."""
        owners = [await self.store.owner(i.type, i.value) for i in identifiers]
        profile_id = next((owner for owner in owners if owner), None) or str(uuid.uuid4())
        for identifier, owner in zip(identifiers, owners):
            if owner is None:
                winner = await self.store.claim(identifier.type, identifier.value, profile_id)
                if winner != profile_id and not any(owners):
                    # Another replica created this person a moment ago: join theirs.
                    profile_id = winner
        return profile_id

    async def lookup(self, identifier: identity_pb2.Identifier) -> str | None:
        return await self.store.owner(identifier.type, identifier.value)
