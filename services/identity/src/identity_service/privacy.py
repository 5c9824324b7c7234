"""The identity service's part in privacy requests (mosaic.platform.privacy): a person's
profiles, identifiers, merge history and conflicts, exported or erased.

The person is every profile the request names plus those the graph joins to them (children
merged into a survivor, the survivor of a merged profile). Erasure takes the locks of the
person's roots (the resolver's, with a longer lease), so no event links, merges or splits
them from its read of their identifiers to their removal; under them it keeps a tombstone per
identifier of the person and per profile id (erasures.py: an event naming one from now on is
dropped, a root whose row is gone is never adopted), then removes the claims the person holds (an identifier another profile claims is left alone), the
profile rows, members, children, merge records, conflicts, sightings and the recorded links the
dry run replays that name an identifier of the person (a scan of the link history: its cost
grows with it), and last the claims of the person's identifiers made meanwhile.

Every replica hears every erasure request (`heard`, through Bus.listen) and forgets the person
at once, whichever replica's participant runs it: their profiles join the resolver's erased set
(a resolution to them is dropped from then on), their cached claims and roots go, and their
sightings, pending or written by a flush that raced the erasure, are removed. The erasure
receipt lists the identifiers, so consent can suppress them at ingestion.

A notice missed (Bus.listen is at most once) is made up for by `follow`: each time the replica's
connection comes back, and once at start, it empties its claim and root caches, hears again every
request still in privacy.requested, and empties the caches a second time. Why that is enough,
rather than a durable consumer per replica: a request leaves the stream only once complete
(consent erases it then), and identity's receipt comes after its rows are gone, so a request
missed and no longer in the stream has nothing left in the store to resolve by; one still in the
stream is heard again. The second emptying drops a claim read, between the first and the replay,
from an erasure that completed meanwhile (a read that straddles it is not cached: see
Resolver.claims). What a replica forgets is only cache, read again from the store. A replica
that misses a notice without losing its connection (a slow consumer cut off counts as lost) is
not a case NATS has. And a home whose row is gone is checked against the profile tombstones
(Resolver.root), so a person's profile unnamed by the request and gone before this replica's
walk is refused too.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import tenacity
from google.protobuf import json_format
from nats.js import JetStreamContext

from identity_service.erasures import PROFILE
from identity_service.resolver import Resolver, Retry, now_ms
from identity_service.sightings import Sightings
from identity_service.store import IdentityStore, Key, decode_keys
from mosaic.consent.v1 import privacy_pb2
from mosaic.events.v1 import privacy_request_pb2
from mosaic.identity.v1 import identity_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus
from mosaic.platform.errors import Unavailable
from mosaic.platform.privacy import Answer, hear_in_flight
from mosaic.platform.store.cassandra import CassandraStore

log = logging.getLogger("identity.privacy")
MAX_PROFILES = 1_000  # the graph caps a person at 100 merges; this only bounds a walk gone wrong
# An erasure holds the person's locks while it reads and removes the whole person (links scan
# included), longer than a resolution; a crashed one holds back only the person's own events.
ERASURE_LEASE_FACTOR = 10


def named(request: privacy_request_pb2.PrivacyRequested) -> list[str]:
    return list(dict.fromkeys(p for p in [request.person_id, *request.profile_ids] if p))


class IdentityPrivacy:
    def __init__(self, store: IdentityStore, resolver: Resolver, sightings: Sightings) -> None:
        self.store = store
        self.resolver = resolver
        self.sightings = sightings
        self._heard: set[asyncio.Task] = set()

    async def follow(self, bus: Bus) -> None:
        """Hear every erasure request from now on, and make up for those missed while the
        connection was down (see the module's docstring); at start, the requests in flight."""
        await bus.listen(topics.PRIVACY_REQUESTED, self.heard)
        bus.on_reconnect(lambda: self.catch_up(bus.jetstream))
        await self.catch_up(bus.jetstream)

    async def catch_up(self, js: JetStreamContext) -> None:
        self.resolver.forget_all()
        await hear_in_flight(js, self.heard)
        self.resolver.forget_all()

    def _spawn(self, work) -> None:
        task = asyncio.create_task(work)
        self._heard.add(task)
        task.add_done_callback(self._heard.discard)

    def heard(self, request: privacy_request_pb2.PrivacyRequested) -> None:
        """Every replica's notice of a request (Bus.listen): an erased person is forgotten at
        once by the profiles named, then by those the graph joins to them, sightings included."""
        if request.kind != privacy_pb2.PRIVACY_REQUEST_KIND_ERASURE:
            return
        self.resolver.forget_person(named(request))
        self._spawn(self._forget(request))

    async def _forget(self, request: privacy_request_pb2.PrivacyRequested) -> None:
        try:
            await self.sightings.forget(self.resolver.forget_person(await self._profiles(request)))
        except Exception:  # noqa: BLE001 - logged; the erasure itself removes what is stored
            log.exception("erased person not forgotten", extra={"fields": {"request_id": request.request_id}})

    async def _profiles(self, request: privacy_request_pb2.PrivacyRequested) -> list[str]:
        seen: dict[str, None] = {}
        todo = named(request)
        while todo and len(seen) < MAX_PROFILES:
            profile_id = todo.pop()
            if profile_id in seen:
                continue
            seen[profile_id] = None
            todo += await self.store.children(profile_id)
            row = (await self.store.profiles([profile_id])).get(profile_id)
            if row is not None and row.merged_into:
                todo.append(row.merged_into)
        return list(seen)

    async def export(self, request: privacy_request_pb2.PrivacyRequested) -> Answer:
        profiles = await self._profiles(request)
        rows = await self.store.profiles(profiles)
        members = await self.store.members(profiles)
        document: dict[str, list] = {
            "profiles": [
                {
                    "profile_id": r.profile_id,
                    "created_at_ms": r.created_at,
                    "created_by": r.created_by,
                    "merged_into": r.merged_into,
                }
                for r in rows.values()
            ],
            "identifiers": [
                {
                    "profile_id": p,
                    "type": m.id_type,
                    "value": m.id_value,
                    "first_seen_ms": m.first_seen,
                    "event_id": m.event_id,
                }
                for p, ms in members.items()
                for m in ms
            ],
            "merges": [],
            "unlinked": [],
        }
        merge_ids: set[str] = set()
        for profile_id in profiles:
            for record in await self.store.merges_of(profile_id):
                if record.merge_id not in merge_ids:
                    merge_ids.add(record.merge_id)
                    document["merges"].append(json_format.MessageToDict(record, preserving_proto_field_name=True))
            document["unlinked"] += [
                json_format.MessageToDict(u, preserving_proto_field_name=True)
                for u in await self.store.unlinked_of(profile_id, 10_000)
            ]
        return Answer({kind: len(items) for kind, items in document.items()}, document)

    async def erase(self, request: privacy_request_pb2.PrivacyRequested) -> Answer:
        self.resolver.forget_person(named(request))  # this replica may hear the notice after
        await self.sightings.flush()
        holder = f"erasure-{request.request_id}-{uuid.uuid4().hex[:8]}"
        profiles, locked = await self._lock_person(request, holder)
        try:
            answer = await self._erase_locked(profiles)
        finally:
            for root in locked:  # its row is gone: nothing left to release but on a failure
                await self.store.unlock(root, holder)
        await self.sightings.forget(set(profiles))
        return answer

    async def _lock_person(
        self, request: privacy_request_pb2.PrivacyRequested, holder: str
    ) -> tuple[list[str], list[str]]:
        """The person's profiles, with the locks of their roots; the walk is done again under
        them, for a merge that moved the person between the walk and the locks."""
        lease = self.resolver.lease_ms * ERASURE_LEASE_FACTOR
        try:
            async for attempt in tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception_type(Retry),
                stop=tenacity.stop_after_delay(2 * self.resolver.lease_ms / 1000),  # a crashed holder's lease
                wait=tenacity.wait_random(0.01, 0.2),
                reraise=True,
            ):
                with attempt:
                    profiles = await self._profiles(request)
                    rows = await self.store.profiles(profiles)
                    locked: list[str] = []
                    try:
                        for root in sorted(p for p, row in rows.items() if not row.merged_into):
                            now = now_ms()
                            if not (await self.store.lock(root, holder, now, now + lease))[0]:
                                raise Retry()
                            locked.append(root)
                        if set(await self._profiles(request)) != set(profiles):
                            raise Retry()
                    except BaseException:
                        for root in locked:
                            await self.store.unlock(root, holder)
                        raise
                    return profiles, locked
        except Retry:
            raise Unavailable("identity graph", f"the profiles of request {request.request_id} stayed locked") from None
        raise AssertionError("unreachable: tenacity returns or raises")

    async def _erase_locked(self, profiles: list[str]) -> Answer:
        self.resolver.forget_person(profiles)
        members = await self.store.members(profiles)
        keys: set[Key] = {(m.id_type, m.id_value) for ms in members.values() for m in ms}
        claims = await self.store.claims(sorted(keys))
        # The person's identifiers: those they claim, or nobody does yet (a claim in flight); one
        # another profile claims is someone else's and left alone.
        theirs = sorted(k for k in keys if k not in claims or claims[k].profile_id in profiles)
        claimed = [(key, claims[key].profile_id) for key in theirs if key in claims]
        # First the tombstones: from now on, a new claim of these is undone by its claimer.
        await self.resolver.erasures.record([*theirs, *((PROFILE, p) for p in profiles)], now_ms())
        merge_ids = sorted({r.merge_id for p in profiles for r in await self.store.merges_of(p)})
        if isinstance(self.store.db, CassandraStore):
            counts = await self._erase_cassandra(profiles, claimed, merge_ids, keys)
        else:
            counts = await self._erase_sqlite(profiles, claimed, merge_ids, keys)
        if profiles:
            counts["identity_claims"] += await self._unclaim_since(theirs)
        self.resolver.forget_person(profiles)
        self.resolver.forget_claims(keys)
        identifiers = [identity_pb2.Identifier(type=t, value=v) for t, v in sorted(keys)]
        return Answer(counts, identifiers=identifiers)

    async def _unclaim_since(self, keys: list[Key]) -> int:
        """Remove the claims of the person's identifiers made while the erasure ran, by a
        resolver that read the tombstones before they were written (see erasures), whichever
        profile made them (one of the person's still resolving an event, or a new one)."""
        removed = 0
        for key, claim in (await self.store.claims(keys)).items():
            if await self.store.unclaim(key, claim.profile_id):
                await self.store.remove_member(claim.profile_id, key)
                removed += 1
        return removed

    async def _erase_sqlite(self, profiles, claimed, merge_ids, keys) -> dict[str, int]:
        marks = ",".join("?" * len(profiles))

        def work(db) -> dict[str, int]:
            counts = {
                "identity_claims": db.executemany(
                    "DELETE FROM identity_claims WHERE id_type = ? AND id_value = ? AND profile_id = ?",
                    [(*key, profile_id) for key, profile_id in claimed],
                ).rowcount
                if claimed
                else 0
            }
            for table in (
                "identity_members",
                "identity_profiles",
                "identity_profile_merges",
                "identity_unlinked",
                "identity_sightings",
            ):
                counts[table] = db.execute(f"DELETE FROM {table} WHERE profile_id IN ({marks})", profiles).rowcount
            counts["identity_children"] = db.execute(
                f"DELETE FROM identity_children WHERE profile_id IN ({marks}) OR child IN ({marks})",
                (*profiles, *profiles),
            ).rowcount
            counts["identity_merges"] = (
                db.executemany("DELETE FROM identity_merges WHERE merge_id = ?", [(m,) for m in merge_ids]).rowcount
                if merge_ids
                else 0
            )
            naming = [
                (at, event_id)
                for at, event_id, text in db.execute("SELECT at, event_id, identifiers FROM identity_links")
                if keys.intersection(decode_keys(text))
            ]
            counts["identity_links"] = len(naming)
            db.executemany("DELETE FROM identity_links WHERE at = ? AND event_id = ?", naming)
            return counts

        return await self.store.db.transaction(work) if profiles else {}

    async def _erase_cassandra(self, profiles, claimed, merge_ids, keys) -> dict[str, int]:
        db: CassandraStore = self.store.db
        members = await self.store.members(profiles)
        counts = {
            "identity_claims": sum([await self.store.unclaim(key, profile_id) for key, profile_id in claimed]),
            "identity_members": sum(len(m) for m in members.values()),
            "identity_profiles": len(await self.store.profiles(profiles)),
            "identity_merges": len(merge_ids),
        }
        statements: list[tuple[str, tuple]] = []
        for profile_id in profiles:
            for table in (
                "identity_members",
                "identity_profiles",
                "identity_children",
                "identity_profile_merges",
                "identity_unlinked",
            ):
                statements.append((f"DELETE FROM {table} WHERE profile_id = ?", (profile_id,)))
        statements += [("DELETE FROM identity_merges WHERE merge_id = ?", (m,)) for m in merge_ids]
        links = 0
        for hour_row in await db.execute("SELECT hour FROM identity_link_hours WHERE shard = 0"):
            after = (-1, "")
            while True:
                rows = await db.execute(
                    "SELECT at, event_id, identifiers FROM identity_links WHERE hour = ? AND (at, event_id) > (?, ?) LIMIT 1000",
                    (hour_row.hour, *after),
                )
                for row in rows:
                    if keys.intersection(decode_keys(row.identifiers)):
                        links += 1
                        statements.append(
                            (
                                "DELETE FROM identity_links WHERE hour = ? AND at = ? AND event_id = ?",
                                (hour_row.hour, row.at, row.event_id),
                            )
                        )
                if len(rows) < 1000:
                    break
                after = (rows[-1].at, rows[-1].event_id)
        counts["identity_links"] = links
        for cql, params in statements:
            await db.execute(cql, params)
        await self.store.forget_sightings(profiles)
        return counts
