"""The identity store on Cassandra: prepared statements; LWT on claims, profiles, rules and settings only."""

from __future__ import annotations

import asyncio
import calendar
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from identity_service.store.base import IdentityStore
from identity_service.store.model import Claim, Key, Link, Member, OutboxEntry, ProfileRow, decode_keys, encode_keys
from mosaic.identity.v1 import identity_pb2
from mosaic.platform.store import Migration, Repository
from mosaic.platform.store.cassandra import CassandraStore

# Links are partitioned by the hour of their event: 10 M events a day stay near 40 MB a partition.
HOUR_MS = 3_600_000

MIGRATIONS = [
    Migration(
        1,
        (
            "CREATE TABLE IF NOT EXISTS identity_claims ("
            " id_type text, id_value text, profile_id text, claimed_at timestamp,"
            " PRIMARY KEY ((id_type, id_value)))",
        ),
    ),
    Migration(
        2,
        (
            "ALTER TABLE identity_claims ADD IF NOT EXISTS (event_id text, source text)",
            "CREATE TABLE IF NOT EXISTS identity_profiles ("
            " profile_id text PRIMARY KEY, created_at bigint, created_by text, merged_into text,"
            " merge_id text, holder text, lease_until bigint, never_merge set<text>)",
            "CREATE TABLE IF NOT EXISTS identity_members ("
            " profile_id text, id_type text, id_value text, first_seen bigint, event_id text, source text,"
            " PRIMARY KEY ((profile_id), id_type, id_value))",
            "CREATE TABLE IF NOT EXISTS identity_children ("
            " profile_id text, child text, PRIMARY KEY ((profile_id), child))",
            "CREATE TABLE IF NOT EXISTS identity_merges (merge_id text PRIMARY KEY, record blob)",
            "CREATE TABLE IF NOT EXISTS identity_profile_merges ("
            " profile_id text, merge_id text, PRIMARY KEY ((profile_id), merge_id))",
            # One row per (profile, identifier): a conflict that recurs on every event of a shared
            # device keeps its latest event, not one row per event.
            "CREATE TABLE IF NOT EXISTS identity_unlinked ("
            " profile_id text, id_type text, id_value text, record blob, PRIMARY KEY ((profile_id), id_type, id_value))",
            "CREATE TABLE IF NOT EXISTS identity_seen ("
            " id_type text, id_value text, last_seen bigint, last_event text, PRIMARY KEY ((id_type, id_value)))",
            "CREATE TABLE IF NOT EXISTS identity_links ("
            " hour bigint, at bigint, event_id text, identifiers text, PRIMARY KEY ((hour), at, event_id))",
            "CREATE TABLE IF NOT EXISTS identity_link_hours (shard int, hour bigint, PRIMARY KEY ((shard), hour))",
            "CREATE TABLE IF NOT EXISTS identity_outbox ("
            " shard int, message_id text, topic text, key text, payload blob, PRIMARY KEY ((shard), message_id))"
            # Entries are deleted once published: keep the tombstones of this one partition short-lived
            # (a resurrected entry is only republished under its merge id, which consumers dedupe).
            " WITH gc_grace_seconds = 3600",
            "CREATE TABLE IF NOT EXISTS identity_rules (name text PRIMARY KEY, version bigint, rules blob)",
        ),
    ),
    # Sightings by home profile: a person's identifiers are one map, written by one statement,
    # each entry keeping its own write time (the event time), so the latest event wins.
    Migration(
        3,
        (
            "CREATE TABLE IF NOT EXISTS identity_sightings (profile_id text PRIMARY KEY, last_seen map<text, bigint>)",
            "DROP TABLE IF EXISTS identity_seen",
        ),
    ),
    # Tombstones of erased identifiers (a keyed hash each, kept for good) and the key, written
    # once by LWT.
    Migration(
        4,
        (
            "CREATE TABLE IF NOT EXISTS identity_erasures (id_hash text PRIMARY KEY, erased_at bigint)",
            "CREATE TABLE IF NOT EXISTS identity_settings (name text PRIMARY KEY, value text)",
        ),
    ),
]
# The write time of an erased person's sightings' deletion: beyond any event's (µs; 2^62 is year 148,000).
ERASED_FOR_GOOD = 2**62

_PROFILE = "SELECT profile_id, created_at, created_by, merged_into, merge_id, holder, lease_until, never_merge FROM identity_profiles"


class CassandraIdentityStore(Repository, IdentityStore):
    db: CassandraStore

    def __init__(self, db: CassandraStore) -> None:
        super().__init__(db)
        self._hours: set[int] = set()  # link hours this process has recorded already

    async def claims(self, keys: Sequence[Key]) -> dict[Key, Claim]:
        # One request for an event's few identifiers: the node reads every (type, value) pair
        # of the two IN lists, a handful of partitions, cheaper than a driver round trip each
        # (the Python driver, not the node, is what limits a replica).
        wanted = set(keys)
        types, values = sorted({t for t, _ in wanted}), sorted({v for _, v in wanted})
        if len(types) * len(values) > 64:
            groups = [([t], sorted(v for kt, v in wanted if kt == t)) for t in types]
        else:
            groups = [(types, values)]
        found: dict[Key, Claim] = {}
        for rows in await asyncio.gather(
            *(
                self.db.execute(
                    "SELECT id_type, id_value, profile_id, event_id, claimed_at, source FROM identity_claims"
                    " WHERE id_type IN ? AND id_value IN ?",
                    group,
                )
                for group in groups
            )
        ):
            found.update({(r.id_type, r.id_value): _claim(r) for r in rows if (r.id_type, r.id_value) in wanted})
        return found

    async def claim(self, key: Key, claim: Claim) -> Claim:
        applied, row = await self.db.execute_lwt(
            "INSERT INTO identity_claims (id_type, id_value, profile_id, event_id, claimed_at, source)"
            " VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS",
            (*key, claim.profile_id, claim.event_id, _datetime(claim.claimed_at), claim.source),
        )
        return claim if applied else _claim(row)

    async def unclaim(self, key: Key, profile_id: str) -> bool:
        # An LWT, as the claim was: a plain delete's timestamp could shadow a later claim's.
        applied, _ = await self.db.execute_lwt(
            "DELETE FROM identity_claims WHERE id_type = ? AND id_value = ? IF profile_id = ?", (*key, profile_id)
        )
        return applied

    async def record_erasures(self, hashes: Sequence[str], at: int) -> None:
        await asyncio.gather(
            *(
                self.db.execute("INSERT INTO identity_erasures (id_hash, erased_at) VALUES (?, ?)", (h, at))
                for h in hashes
            )
        )

    async def erased(self, hashes: Sequence[str]) -> set[str]:
        rows = await self.db.execute("SELECT id_hash FROM identity_erasures WHERE id_hash IN ?", (list(hashes),))
        return {row.id_hash for row in rows}

    async def setting(self, name: str, proposed: str) -> str:
        applied, row = await self.db.execute_lwt(
            "INSERT INTO identity_settings (name, value) VALUES (?, ?) IF NOT EXISTS", (name, proposed)
        )
        return proposed if applied else row.value

    async def profiles(self, profile_ids: Sequence[str]) -> dict[str, ProfileRow]:
        rows = await asyncio.gather(*(self.db.execute(f"{_PROFILE} WHERE profile_id = ?", (p,)) for p in profile_ids))
        return {found[0].profile_id: _profile(found[0]) for found in rows if found}

    async def create_locked(
        self, profile_id: str, created_at: int, event_id: str, holder: str, lease_until: int
    ) -> bool:
        applied, _ = await self.db.execute_lwt(
            "INSERT INTO identity_profiles (profile_id, created_at, created_by, merged_into, merge_id, holder, lease_until)"
            " VALUES (?, ?, ?, '', '', ?, ?) IF NOT EXISTS",
            (profile_id, created_at, event_id, holder, lease_until),
        )
        return applied

    async def lock(self, profile_id: str, holder: str, now: int, lease_until: int) -> tuple[bool, str | None]:
        applied, row = await self.db.execute_lwt(
            "UPDATE identity_profiles SET holder = ?, lease_until = ? WHERE profile_id = ?"
            " IF lease_until < ? AND merged_into = ''",
            (holder, lease_until, profile_id, now),
        )
        if applied:
            return True, ""
        # A failed condition returns the columns it read; none at all when the row is missing.
        return False, getattr(row, "merged_into", None)

    async def delete_locked(self, profile_id: str, holder: str) -> bool:
        applied, _ = await self.db.execute_lwt(
            "DELETE FROM identity_profiles WHERE profile_id = ? IF holder = ?", (profile_id, holder)
        )
        return applied

    async def unlock(self, profile_id: str, holder: str) -> None:
        await self.db.execute_lwt(
            "UPDATE identity_profiles SET holder = '', lease_until = 0 WHERE profile_id = ? IF holder = ?",
            (profile_id, holder),
        )

    async def merge_into(self, profile_id: str, survivor: str, merge_id: str, holder: str) -> bool:
        applied, _ = await self.db.execute_lwt(
            "UPDATE identity_profiles SET merged_into = ?, merge_id = ?, holder = '', lease_until = 0"
            " WHERE profile_id = ? IF holder = ?",
            (survivor, merge_id, profile_id, holder),
        )
        return applied

    async def unmerge(self, profile_id: str, survivor: str, never_merge: str) -> bool:
        applied, _ = await self.db.execute_lwt(
            "UPDATE identity_profiles SET merged_into = '', merge_id = '', never_merge = never_merge + ?"
            " WHERE profile_id = ? IF merged_into = ?",
            ({never_merge}, profile_id, survivor),
        )
        return applied

    async def members(self, profile_ids: Sequence[str]) -> dict[str, list[Member]]:
        rows = await asyncio.gather(
            *(
                self.db.execute(
                    "SELECT id_type, id_value, first_seen, event_id, source FROM identity_members WHERE profile_id = ?",
                    (p,),
                )
                for p in profile_ids
            )
        )
        return {p: [Member(*row) for row in found] for p, found in zip(profile_ids, rows, strict=False)}

    async def add_members(self, profile_id: str, members: Sequence[Member]) -> None:
        await self.db.execute_partitioned(
            {
                profile_id: [
                    (
                        "INSERT INTO identity_members (profile_id, id_type, id_value, first_seen, event_id, source)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (profile_id, m.id_type, m.id_value, m.first_seen, m.event_id, m.source),
                    )
                    for m in members
                ]
            },
            atomic=False,
        )

    async def remove_member(self, profile_id: str, key: Key) -> None:
        await self.db.execute(
            "DELETE FROM identity_members WHERE profile_id = ? AND id_type = ? AND id_value = ?", (profile_id, *key)
        )

    async def children(self, profile_id: str) -> list[str]:
        rows = await self.db.execute("SELECT child FROM identity_children WHERE profile_id = ?", (profile_id,))
        return [row.child for row in rows]

    async def add_child(self, profile_id: str, child: str) -> None:
        await self.db.execute("INSERT INTO identity_children (profile_id, child) VALUES (?, ?)", (profile_id, child))

    async def remove_child(self, profile_id: str, child: str) -> None:
        await self.db.execute("DELETE FROM identity_children WHERE profile_id = ? AND child = ?", (profile_id, child))

    async def save_merge(self, record: identity_pb2.MergeRecord) -> None:
        await self.db.execute(
            "INSERT INTO identity_merges (merge_id, record) VALUES (?, ?)",
            (record.merge_id, record.SerializeToString()),
        )
        for profile_id in (record.survivor_profile_id, record.merged_profile_id):
            await self.db.execute(
                "INSERT INTO identity_profile_merges (profile_id, merge_id) VALUES (?, ?)",
                (profile_id, record.merge_id),
            )

    async def merge(self, merge_id: str) -> identity_pb2.MergeRecord | None:
        rows = await self.db.execute("SELECT record FROM identity_merges WHERE merge_id = ?", (merge_id,))
        return identity_pb2.MergeRecord.FromString(rows[0].record) if rows else None

    async def merges_of(self, profile_id: str) -> list[identity_pb2.MergeRecord]:
        rows = await self.db.execute("SELECT merge_id FROM identity_profile_merges WHERE profile_id = ?", (profile_id,))
        found = await asyncio.gather(*(self.merge(row.merge_id) for row in rows))
        return sorted((r for r in found if r), key=lambda r: (r.merged_at.ToMilliseconds(), r.merge_id))

    async def save_unlinked(self, records: Sequence[identity_pb2.Unlinked]) -> None:
        await asyncio.gather(
            *(
                self.db.execute(
                    "INSERT INTO identity_unlinked (profile_id, id_type, id_value, record) VALUES (?, ?, ?, ?)",
                    (r.profile_id, r.identifier.type, r.identifier.value, r.SerializeToString()),
                )
                for r in records
            )
        )

    async def unlinked_of(self, profile_id: str, limit: int = 200) -> list[identity_pb2.Unlinked]:
        rows = await self.db.execute(
            "SELECT record FROM identity_unlinked WHERE profile_id = ? LIMIT ?", (profile_id, limit)
        )
        return [identity_pb2.Unlinked.FromString(row.record) for row in rows]

    async def touch_many(self, sightings: Mapping[Key, tuple[str, int]]) -> None:
        # One statement per home and event time, packed by home, four requests at a time
        # (binding them holds the event loop: more at once would delay the events meanwhile).
        by_home: dict[tuple[str, int], dict[str, int]] = {}
        for key, (home, at) in sightings.items():
            by_home.setdefault((home, at), {})[encode_keys([key])] = at
        statements: dict[str, list[tuple[str, tuple]]] = {}
        for (home, at), seen in by_home.items():
            statements.setdefault(home, []).append(
                (
                    "UPDATE identity_sightings USING TIMESTAMP ? SET last_seen = last_seen + ? WHERE profile_id = ?",
                    (at * 1000, seen, home),
                )
            )
        await self.db.execute_partitioned(statements, atomic=False, at_once=4)

    async def forget_sightings(self, homes: Sequence[str]) -> None:
        # Sightings are written at their event's time (touch_many), which a client's clock may
        # put ahead of ours: the deletion is stamped beyond any, so none written later shows.
        for home in homes:
            await self.db.execute(
                "DELETE FROM identity_sightings USING TIMESTAMP ? WHERE profile_id = ?", (ERASED_FOR_GOOD, home)
            )

    async def last_seen(self, homes: Sequence[str]) -> dict[Key, int]:
        rows = await asyncio.gather(
            *(
                self.db.execute("SELECT last_seen FROM identity_sightings WHERE profile_id = ?", (home,))
                for home in homes
            )
        )
        return {decode_keys(key)[0]: at for found in rows if found for key, at in (found[0].last_seen or {}).items()}

    async def record_links(self, links: Sequence[Link]) -> None:
        by_hour: dict[int, list[tuple[str, tuple]]] = {}
        for link in links:
            hour = link.at // HOUR_MS
            by_hour.setdefault(hour, []).append(
                (
                    "INSERT INTO identity_links (hour, at, event_id, identifiers) VALUES (?, ?, ?, ?)",
                    (hour, link.at, link.event_id, encode_keys(link.identifiers)),
                )
            )
        await self.db.execute_partitioned(by_hour, atomic=False)
        for hour in sorted(by_hour.keys() - self._hours):
            await self.db.execute("INSERT INTO identity_link_hours (shard, hour) VALUES (0, ?)", (hour,))
            self._hours.add(hour)

    async def links(self, limit: int) -> list[Link]:
        hours = await self.db.execute("SELECT hour FROM identity_link_hours WHERE shard = 0")
        found: list[Link] = []
        for hour in sorted(row.hour for row in hours):
            after = (-1, "")
            while len(found) < limit:
                page = min(1000, limit - len(found))
                rows = await self.db.execute(
                    "SELECT at, event_id, identifiers FROM identity_links WHERE hour = ? AND (at, event_id) > (?, ?) LIMIT ?",
                    (hour, *after, page),
                )
                found.extend(Link(r.at, r.event_id, decode_keys(r.identifiers)) for r in rows)
                if len(rows) < page:
                    break
                after = (rows[-1].at, rows[-1].event_id)
        return found[:limit]

    async def outbox_put(self, entry: OutboxEntry) -> None:
        await self.db.execute(
            "INSERT INTO identity_outbox (shard, message_id, topic, key, payload) VALUES (0, ?, ?, ?, ?)",
            (entry.message_id, entry.topic, entry.key, entry.payload),
        )

    async def outbox_pending(self, limit: int = 100) -> list[OutboxEntry]:
        rows = await self.db.execute(
            "SELECT message_id, topic, key, payload FROM identity_outbox WHERE shard = 0 LIMIT ?", (limit,)
        )
        return [OutboxEntry(r.message_id, r.topic, r.key, r.payload) for r in rows]

    async def outbox_done(self, message_id: str) -> None:
        await self.db.execute("DELETE FROM identity_outbox WHERE shard = 0 AND message_id = ?", (message_id,))

    async def load_rules(self) -> identity_pb2.IdentityRules | None:
        rows = await self.db.execute("SELECT rules FROM identity_rules WHERE name = 'current'")
        return identity_pb2.IdentityRules.FromString(rows[0].rules) if rows else None

    async def save_rules(self, rules: identity_pb2.IdentityRules, expected_version: int) -> bool:
        if expected_version == 0:
            applied, _ = await self.db.execute_lwt(
                "INSERT INTO identity_rules (name, version, rules) VALUES ('current', ?, ?) IF NOT EXISTS",
                (rules.version, rules.SerializeToString()),
            )
        else:
            applied, _ = await self.db.execute_lwt(
                "UPDATE identity_rules SET version = ?, rules = ? WHERE name = 'current' IF version = ?",
                (rules.version, rules.SerializeToString(), expected_version),
            )
        return applied


def _datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


def _ms(value: datetime | None) -> int:
    if value is None:
        return 0
    return calendar.timegm(value.utctimetuple()) * 1000 + value.microsecond // 1000


def _claim(row) -> Claim:
    return Claim(row.profile_id, row.event_id or "", _ms(row.claimed_at), row.source or "")


def _profile(row) -> ProfileRow:
    return ProfileRow(
        row.profile_id,
        row.created_at or 0,
        row.created_by or "",
        row.merged_into or "",
        row.merge_id or "",
        row.holder or "",
        row.lease_until or 0,
        frozenset(row.never_merge or ()),
    )
