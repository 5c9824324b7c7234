"""Resolution: the profile of an event's identifiers, linking and merging within the rules.

Concurrency. events.raw is partitioned by the event's first id, so two events sharing an
e-mail may be resolved at once by two partitions or two replicas. The graph stays what one
replica processing the same events one at a time would build, by three rules:

1. Claims are write-once (LWT `IF NOT EXISTS`): an identifier has one home profile for ever,
   and a racing claim reads the winner's.
2. Every change of a component (new links, merges, splits) is decided by the holder of the
   lock of every root profile involved. The lock is an LWT on the root's row (`IF
   lease_until < now AND merged_into = ''`), taken in profile-id order, never waited on while
   holding another (all are released and retried with jitter), so there is no deadlock; a
   crashed holder's lease runs out. Under the locks the component's state is read again and
   `graph.decide` runs on it: the decision is serialised per component, and writes on the
   root rows are conditioned on holding the lock (`IF holder = ?`).
3. A resolution that changes nothing (every identifier known, one root) takes no lock: it is a
   read that linearises before or after any concurrent change. Its reads come from caches:
   claims never change, and a home's root (see RootCache) is forgotten when a merge or split
   touches it; a stale root only names a profile merged away a moment ago, which the profile
   service forwards to its survivor. A change never trusts the cache: under the locks it
   reads the roots again and starts over if they moved.

The one race left is a claim of a brand-new identifier by two components at once; the LWT
picks one, and the loser (which claims before it merges anything) re-reads and decides again,
now seeing the winner's component, as if it had come second. Records derived from a merge (children, audit, outbox) are
written before the merge's LWT with ids a replay computes again, and readers trust them only
when the profile row agrees, so a crash at any point leaves nothing a redelivery cannot finish.

Identifiers never seen are checked against the tombstones of erased people (erasures.py)
before they are claimed, and again once claimed, for an erasure running meanwhile: on a hit the
event's claims and members, and the profile made for it, are undone and `Erased` raised, so its
handler drops it. The erasure holds the locks of the person's roots while it reads their
identifiers and removes them, so no change of their component slips between its read and its
removal; a root whose row it removed is never adopted again (its profile id has a tombstone).
Every replica hears every erasure request (`forget_person`): from then on a resolution to one of
the person's profiles raises `Erased`, a set lookup on the path that reads nothing. (A replica
that dies between a claim and its second read, while an erasure of that identifier runs, leaves
the claim, which the redelivered event then resolves by.)

What this guarantees: every change is decided under the locks of all the components it
touches, so a concurrent run is equivalent to a serial run in the order the locks admitted the
changes. Where the rules make the outcome depend on order (two user ids reaching for one
shared device: the first keeps it), a serial run depends on order too, and the concurrent run
ends with one of the serial outcomes, never a mix (never both user ids on one profile). Where
they do not, which is the common case, the graph (which identifiers are together, which are
left out) is the same whatever the interleaving or arrival order; the multi-process test
checks exactly that against a serial run. New profiles are named after the event that created
them (uuid5 of its id), so a replay after a crash names them again the same way.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
import uuid
from dataclasses import dataclass, field

import tenacity
from google.protobuf import timestamp_pb2

from identity_service import graph
from identity_service.claim_cache import ClaimCache
from identity_service.erasures import ErasedProfiles, Erasures
from identity_service.graph import Component, Plan
from identity_service.rules import Rules
from identity_service.store import Claim, IdentityStore, Key, Member, OutboxEntry
from mosaic.events.v1 import identity_changed_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform import retry, topics
from mosaic.platform.errors import FailedPrecondition, InvalidArgument, Unavailable
from mosaic.platform.lru import Lru

NAMESPACE = uuid.UUID("5b0c7a52-3c1e-4d1e-9a57-6d6f73616963")
MAX_ATTEMPTS = 50
MAX_CHAIN = 256


def now_ms() -> int:
    return int(time.time() * 1000)


def profile_id_for(event_id: str) -> str:
    """A new profile is named after the event that created it, so a replay names it the same."""
    return str(uuid.uuid5(NAMESPACE, f"profile:{event_id}"))


def merge_id_for(cause: str, merged: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"merge:{cause}:{merged}"))


@dataclass
class Resolution:
    profile_id: str
    plan: Plan | None = None  # None: nothing changed (the fast path)
    merges: list[identity_pb2.MergeRecord] = field(default_factory=list)


class Retry(Exception):
    """The state moved under us (a lock is held, a root was merged, a claim was lost)."""


class Erased(Exception):
    """The event names an identifier of an erased person: nothing of it is kept (see erasures)."""

    def __init__(self, keys: list[Key]) -> None:
        super().__init__(f"{len(keys)} identifier(s) of an erased person")
        self.keys = keys


def _contended() -> tenacity.AsyncRetrying:
    """Retries of a resolution that met another replica's change: up to MAX_ATTEMPTS tries, a
    short random wait (2-10 ms, times the attempt up to 10) so contenders fall out of step."""
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type(Retry),
        stop=tenacity.stop_after_attempt(MAX_ATTEMPTS),
        wait=lambda state: random.uniform(0.002, 0.01) * min(state.attempt_number, 10),
        reraise=True,
    )


class RootCache:
    """The root each home profile answered for lately, for the event path's reads.

    Bounded (least recently used out) and aged (`max_age` seconds): an entry is dropped when a
    merge or split of this replica touches its root, when another replica's identity.merged
    or identity.split reaches this one (`forget`), and at the latest when it ages out, which
    bounds the staleness a missed notice can cause.
    """

    def __init__(self, size: int = 200_000, max_age: float = 30.0) -> None:
        self.max_age = max_age
        self._roots: Lru[str, tuple[str, float]] = Lru(size)  # home → (root, when cached)
        self._homes: dict[str, set[str]] = {}  # root → homes cached as answering to it

    def get(self, home: str) -> str | None:
        found = self._roots.get(home)
        if found is None:
            return None
        if time.monotonic() - found[1] > self.max_age:
            self._drop(home)
            return None
        return found[0]

    def put(self, home: str, root: str) -> None:
        self._drop(home)
        self._homes.setdefault(root, set()).add(home)
        evicted = self._roots.put(home, (root, time.monotonic()))
        if evicted is not None:
            self._unindex(evicted[0], evicted[1][0])

    def homes_of(self, root: str) -> set[str]:
        """The homes cached as answering to `root`."""
        return set(self._homes.get(root, ()))

    def clear(self) -> None:
        self._roots.clear()
        self._homes.clear()

    def forget(self, profile_ids) -> None:
        """Drop every entry of these profiles, as homes and as roots."""
        for profile_id in profile_ids:
            self._drop(profile_id)
            for home in self._homes.pop(profile_id, set()):
                self._drop(home)

    def _drop(self, home: str) -> None:
        found = self._roots.pop(home)
        if found is not None:
            self._unindex(home, found[0])

    def _unindex(self, home: str, root: str) -> None:
        homes = self._homes.get(root)
        if homes is not None:
            homes.discard(home)
            if not homes:
                del self._homes[root]


class Resolver:
    def __init__(
        self,
        store: IdentityStore,
        lease_seconds: float = 15.0,
        claim_cache: int = 200_000,
        root_cache: RootCache | None = None,
        erasures: Erasures | None = None,
    ) -> None:
        self.store = store
        self.erasures = erasures or Erasures(store)
        self.lease_ms = int(lease_seconds * 1000)
        self._token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._attempts = itertools.count()
        # Claims never change once written, so a cache of them is never stale, but for an
        # erasure's: `forget_claims` counts those, and a claim read or made across one is not
        # cached (it could put back what the erasure just forgot).
        self._claims = ClaimCache(claim_cache)  # indexed by home: see forget_person
        self._forgotten = 0
        self.erased_profiles = ErasedProfiles()  # the people this replica heard being erased
        self.root_cache = root_cache or RootCache()
        self.retries = 0  # decisions redone because the state moved under them (contention)

    # -- reads ------------------------------------------------------------------------------

    async def claims(self, keys: list[Key]) -> dict[Key, Claim]:
        found = {k: claim for k in keys if (claim := self._claims.get(k)) is not None}
        missing = [k for k in keys if k not in found]
        if missing:
            forgotten = self._forgotten
            fetched = await self.store.claims(missing)
            if forgotten == self._forgotten:
                for k, claim in fetched.items():
                    if claim.profile_id not in self.erased_profiles:
                        self._claims.put(k, claim)
            found.update(fetched)
        return found

    def forget_claims(self, keys) -> None:
        """Drop these claims from the cache: an erasure removed them."""
        self._forgotten += 1
        for key in keys:
            self._claims.pop(key)

    def forget_person(self, profile_ids) -> set[str]:
        """An erasure of these profiles was heard: with the homes cached as answering to them,
        they join `erased_profiles`, and every cached claim and root of them goes. Returns them."""
        person = set(profile_ids)
        for profile_id in list(person):
            person |= self.root_cache.homes_of(profile_id)
        self.erased_profiles.add(person)
        self.forget_claims(self._claims.keys_of(person))
        self.root_cache.forget(person)
        return person

    def forget_all(self) -> None:
        """Drop every cached claim and root (the connection came back: a notice may be missed)."""
        self._forgotten += 1
        self._claims.clear()
        self.root_cache.clear()

    def home_of(self, key: Key) -> str | None:
        """The home profile of an identifier this replica has resolved lately (None: not cached)."""
        claim = self._claims.get(key)
        return claim.profile_id if claim else None

    async def root(self, profile_id: str) -> str:
        """The survivor a profile id answers for: itself unless merged away."""
        for _ in range(MAX_CHAIN):
            rows = await self.store.profiles([profile_id])
            row = rows.get(profile_id)
            if row is None and await self.erasures.profile_erased(profile_id):
                # Its row went with an erasure this replica did not hear of for it (a profile
                # merged into the person, unnamed by the request and gone before the walk).
                self.forget_person([profile_id])
            if row is None or not row.merged_into:
                return profile_id
            profile_id = row.merged_into
        raise FailedPrecondition(f"profile {profile_id}", f"merge chain is longer than {MAX_CHAIN}")

    async def roots(self, homes: set[str]) -> dict[str, str]:
        found = await asyncio.gather(*(self.root(h) for h in homes))
        for home, root in zip(homes, found, strict=False):
            self.root_cache.put(home, root)
        return dict(zip(homes, found, strict=False))

    async def cached_roots(self, homes: set[str]) -> dict[str, str]:
        """`roots` for the event path: from the cache where it has them (see RootCache)."""
        found = {home: root for home in homes if (root := self.root_cache.get(home)) is not None}
        if len(found) < len(homes):
            found.update(await self.roots(homes - found.keys()))
        return found

    async def lookup(self, key: Key) -> str | None:
        claim = (await self.claims([key])).get(key)
        return await self.root(claim.profile_id) if claim else None

    async def component(self, root: str) -> Component:
        """A root and every profile merged into it, with the rules' counts; trusts a child
        entry only when the child's row says it is merged into that parent."""
        rows = await self.store.profiles([root])
        created = rows[root].created_at if root in rows else 0
        component = Component(root, created, profiles={root})
        if root in rows:
            component.never_merge |= rows[root].never_merge
        frontier = [root]
        while frontier:
            parent = frontier.pop()
            children = await self.store.children(parent)
            for child, row in (await self.store.profiles(children)).items():
                if row.merged_into == parent and child not in component.profiles:
                    component.profiles.add(child)
                    component.never_merge |= row.never_merge
                    frontier.append(child)
        members = await self.store.members(sorted(component.profiles))
        for found in members.values():
            component.counts.update(m.id_type for m in found)
        return component

    # -- resolution -------------------------------------------------------------------------

    async def resolve(
        self,
        identifiers: list[identity_pb2.Identifier],
        rules: Rules,
        *,
        event_id: str,
        at: int,
        source: str = "",
        rule: str = "",
    ) -> Resolution:
        """The profile of `identifiers` (priority order), changing the graph if the rules say so."""
        keys = [(i.type, i.value) for i in identifiers]
        args = (identifiers, keys, rules, event_id, at, source, rule)
        try:
            return await self._attempt(*args, cached=True)  # the cache only on the first try
        except Retry as first:
            try:
                return await retry.after_first(first, lambda: self._attempt(*args, cached=False), _contended())
            except Retry:
                raise Unavailable("identity graph", f"profiles of event {event_id} stayed contended") from None

    async def _attempt(self, identifiers, keys, rules, event_id, at, source, rule, *, cached: bool) -> Resolution:
        claims = await self.claims(keys)
        homes = {c.profile_id for c in claims.values()}
        roots = await (self.cached_roots(homes) if cached else self.roots(homes))
        key_roots = {k: roots[c.profile_id] for k, c in claims.items()}
        if self.erased_profiles and (erased := self._of_erased(claims, key_roots)):
            raise Erased(erased)  # the person is being erased (or was): resolved to nobody
        if len(claims) == len(keys) and len(set(key_roots.values())) == 1:
            return Resolution(next(iter(key_roots.values())))
        if len(claims) < len(keys) and (erased := await self.erasures.erased([k for k in keys if k not in claims])):
            raise Erased(erased)  # after the erasure: nothing is claimed, nothing made
        try:
            return await self._change(identifiers, roots, key_roots, rules, event_id, at, source, rule)
        except Retry:
            self.root_cache.forget(homes)
            self.retries += 1
            raise

    def _of_erased(self, claims: dict[Key, Claim], key_roots: dict[Key, str]) -> list[Key]:
        """The identifiers whose home or root is a profile heard erased; a home found answering
        to an erased root is one too (merged into the person, unnamed by the request)."""
        erased = [
            k for k, c in claims.items() if c.profile_id in self.erased_profiles or key_roots[k] in self.erased_profiles
        ]
        if erased:
            self.erased_profiles.add(claims[k].profile_id for k in erased)
            self.forget_claims(erased)
        return erased

    async def _change(self, identifiers, roots, key_roots, rules, event_id, at, source, rule) -> Resolution:
        holder = f"{self._token}-{next(self._attempts)}"
        locked = await self.lock_all(sorted(set(key_roots.values())), holder)
        try:
            # The roots were read before the locks (perhaps from the cache): a merge or split may
            # have moved a home since. A locked root is a root (the lock requires it); a home
            # merged into one is read again, and under the locks it can no longer move.
            moved = {home: root for home, root in roots.items() if home != root}
            if moved and await self.roots(set(moved)) != moved:
                raise Retry()
            components = {r: await self.component(r) for r in locked}
            plan = graph.decide(identifiers, key_roots, components, rules)
            created = plan.survivor is None
            if plan.survivor is None:
                if not plan.link:  # decide never does this: the first profile found always joins
                    raise InvalidArgument("event", "no identifier could be linked")
                plan.survivor = profile_id_for(event_id)
                if not await self.store.create_locked(plan.survivor, at, event_id, holder, now_ms() + self.lease_ms):
                    await self.lock_all([plan.survivor], holder)  # a replay after a crash: it exists
                locked.append(plan.survivor)
            survivor = plan.survivor
            # Claims first: they are the one step an outsider can make fail, and failing now
            # leaves no merge behind that a serial run would not have made.
            try:
                await self._link(survivor, plan.link, event_id, at, source)
            except Erased:
                if created:  # the profile was made for this event alone: it goes with it
                    await self.store.delete_locked(survivor, holder)
                    locked.remove(survivor)
                raise
            merges = []
            for loser, identifier in plan.merged:
                merges.append(
                    await self.merge(
                        loser,
                        survivor,
                        holder,
                        components[loser],
                        cause=event_id,
                        rule=rule or f"shared {identifier.type}",
                        identifier=identifier,
                    )
                )
                locked.remove(loser)
            return Resolution(survivor, plan, merges)
        finally:
            for profile_id in locked:
                await self.store.unlock(profile_id, holder)

    async def _link(self, survivor: str, identifiers, event_id: str, at: int, source: str) -> None:
        """Claim new identifiers for the locked survivor.

        The member rows go first: a crash before the claim leaves a member that only
        over-counts (the safe side of a limit) until the redelivered event claims it.
        """
        keys = [(i.type, i.value) for i in identifiers]
        forgotten = self._forgotten
        await self.store.add_members(survivor, [Member(t, v, at, event_id, source) for t, v in keys])
        won = await asyncio.gather(*(self.store.claim(k, Claim(survivor, event_id, at, source)) for k in keys))
        lost = [key for key, claim in zip(keys, won, strict=True) if claim.profile_id != survivor]
        mine = [key for key in keys if key not in lost]
        # The tombstones read again, after the claims, for an erasure running meanwhile (see
        # erasures); lost ones too: the winner may be a claim of an erased identifier that its
        # maker is about to undo, which a retry would take as the identifier's home.
        if erased := await self.erasures.erased(keys):
            for key in mine:
                await self.store.unclaim(key, survivor)
            for key in keys:
                await self.store.remove_member(survivor, key)
            raise Erased(erased)
        if forgotten == self._forgotten and survivor not in self.erased_profiles:
            for key, claim in zip(keys, won, strict=True):
                self._claims.put(key, claim)
        if lost:
            for key in lost:
                await self.store.remove_member(survivor, key)
            raise Retry()  # another component linked it first: decide again, seeing it

    async def lock_all(self, roots: list[str], holder: str) -> list[str]:
        """Lock every root, in order; on any refusal release them all and raise Retry."""
        taken: list[str] = []
        try:
            for root in roots:
                now = now_ms()
                ok, merged_into = await self.store.lock(root, holder, now, now + self.lease_ms)
                if not ok and merged_into is None:
                    # A home profile with no row: erased (the claim was read before the erasure
                    # removed it), or claimed before profiles had rows, which is adopted.
                    if await self.erasures.profile_erased(root):
                        raise Erased([])
                    ok = await self.store.create_locked(root, 0, "", holder, now + self.lease_ms)
                if not ok:
                    raise Retry()
                taken.append(root)
        except BaseException:
            for root in taken:
                await self.store.unlock(root, holder)
            raise
        return taken

    async def merge(
        self,
        loser: str,
        survivor: str,
        holder: str,
        moved: Component,
        *,
        cause: str,
        rule: str,
        identifier: identity_pb2.Identifier | None = None,
    ) -> identity_pb2.MergeRecord:
        """Fold the locked root `loser` into `survivor`; derived records first, the LWT last."""
        merge_id = merge_id_for(cause, loser)
        merged_at = timestamp_pb2.Timestamp()
        merged_at.FromMilliseconds(now_ms())
        record = identity_pb2.MergeRecord(
            merge_id=merge_id,
            survivor_profile_id=survivor,
            merged_profile_id=loser,
            cause_event_id=cause,
            rule=rule,
            merged_at=merged_at,
        )
        if identifier is not None:
            record.identifier.CopyFrom(identifier)
        members = await self.store.members(sorted(moved.profiles))
        event = identity_changed_pb2.IdentityMerged(
            merge_id=merge_id,
            survivor_profile_id=survivor,
            merged_profile_ids=[loser],
            moved_identifiers=[
                identity_pb2.Identifier(type=m.id_type, value=m.id_value) for found in members.values() for m in found
            ],
            cause_event_id=cause,
            rule=rule,
            merged_at=merged_at,
        )
        if identifier is not None:
            event.identifier.CopyFrom(identifier)
        await self.store.add_child(survivor, loser)
        await self.store.save_merge(record)
        await self.store.outbox_put(
            OutboxEntry(f"{merge_id}/{holder}", topics.IDENTITY_MERGED.name, survivor, event.SerializeToString())
        )
        if not await self.store.merge_into(loser, survivor, merge_id, holder):
            raise Retry()  # our lease ran out and someone else holds it now
        self.root_cache.forget([loser])
        return record
