"""The identity store on SQLite: the same conditions as Cassandra's LWT, as conditional SQL.

Each statement runs alone on the store's thread; a conditional UPDATE is atomic in SQLite
(and across processes sharing the file, under its write lock), so the claim, lock and merge
rules hold exactly as on Cassandra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from identity_service.store.base import IdentityStore
from identity_service.store.model import Claim, Key, Link, Member, OutboxEntry, ProfileRow, decode_keys, encode_keys
from mosaic.identity.v1 import identity_pb2
from mosaic.platform.store import Migration, Repository
from mosaic.platform.store.sqlite import SqliteStore

MIGRATIONS = [
    Migration(
        1,
        (
            "CREATE TABLE identity_claims (id_type TEXT, id_value TEXT, profile_id TEXT NOT NULL,"
            " claimed_at TEXT NOT NULL, PRIMARY KEY (id_type, id_value))",
        ),
    ),
    Migration(
        2,
        (
            "ALTER TABLE identity_claims ADD COLUMN event_id TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE identity_claims ADD COLUMN source TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE identity_claims ADD COLUMN claimed_ms INTEGER NOT NULL DEFAULT 0",
            "CREATE TABLE identity_profiles (profile_id TEXT PRIMARY KEY, created_at INTEGER, created_by TEXT,"
            " merged_into TEXT NOT NULL DEFAULT '', merge_id TEXT NOT NULL DEFAULT '', holder TEXT NOT NULL DEFAULT '',"
            " lease_until INTEGER NOT NULL DEFAULT 0, never_merge TEXT NOT NULL DEFAULT '')",
            "CREATE TABLE identity_members (profile_id TEXT, id_type TEXT, id_value TEXT, first_seen INTEGER,"
            " event_id TEXT, source TEXT, PRIMARY KEY (profile_id, id_type, id_value))",
            "CREATE TABLE identity_children (profile_id TEXT, child TEXT, PRIMARY KEY (profile_id, child))",
            "CREATE TABLE identity_merges (merge_id TEXT PRIMARY KEY, record BLOB)",
            "CREATE TABLE identity_profile_merges (profile_id TEXT, merge_id TEXT, PRIMARY KEY (profile_id, merge_id))",
            "CREATE TABLE identity_unlinked (profile_id TEXT, id_type TEXT, id_value TEXT, record BLOB,"
            " PRIMARY KEY (profile_id, id_type, id_value))",
            "CREATE TABLE identity_seen (id_type TEXT, id_value TEXT, last_seen INTEGER, last_event TEXT,"
            " PRIMARY KEY (id_type, id_value))",
            "CREATE TABLE identity_links (at INTEGER, event_id TEXT, identifiers TEXT, PRIMARY KEY (at, event_id))",
            "CREATE TABLE identity_outbox (message_id TEXT PRIMARY KEY, topic TEXT, key TEXT, payload BLOB)",
            "CREATE TABLE identity_rules (name TEXT PRIMARY KEY, version INTEGER, rules BLOB)",
        ),
    ),
    Migration(
        3,
        (
            "CREATE TABLE identity_sightings (profile_id TEXT, id_type TEXT, id_value TEXT, last_seen INTEGER,"
            " PRIMARY KEY (profile_id, id_type, id_value))",
            "DROP TABLE identity_seen",
        ),
    ),
    Migration(
        4,
        (
            "CREATE TABLE identity_erasures (id_hash TEXT PRIMARY KEY, erased_ms INTEGER)",
            "CREATE TABLE identity_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ),
    ),
]

READ_CHUNK = 200  # keys (or profile ids) a read statement names
_PROFILE = "SELECT profile_id, created_at, created_by, merged_into, merge_id, holder, lease_until, never_merge FROM identity_profiles"


class SqliteIdentityStore(Repository, IdentityStore):
    db: SqliteStore

    async def claims(self, keys: Sequence[Key]) -> dict[Key, Claim]:
        # A statement a chunk of keys, with no write lock: a transaction of a statement a key
        # took BEGIN IMMEDIATE and COMMIT around a read. OR, not a row-value IN: SQLite searches
        # the key for each term (IN (VALUES ...) scanned the table); a chunk keeps the OR's
        # expression tree within SQLite's depth of 1,000.
        found = {}
        for first in range(0, len(keys), READ_CHUNK):
            chunk = keys[first : first + READ_CHUNK]
            rows = await self.db.execute(
                "SELECT id_type, id_value, profile_id, event_id, claimed_ms, source FROM identity_claims"
                f" WHERE {' OR '.join('(id_type = ? AND id_value = ?)' for _ in chunk)}",
                [part for key in chunk for part in key],
            )
            found.update({(kind, value): Claim(*claim) for kind, value, *claim in rows})
        return found

    async def claim(self, key: Key, claim: Claim) -> Claim:
        def work(db):
            db.execute(
                "INSERT OR IGNORE INTO identity_claims (id_type, id_value, profile_id, claimed_at, event_id, source, claimed_ms)"
                " VALUES (?, ?, ?, datetime('now'), ?, ?, ?)",
                (*key, claim.profile_id, claim.event_id, claim.source, claim.claimed_at),
            )
            row = db.execute(
                "SELECT profile_id, event_id, claimed_ms, source FROM identity_claims WHERE id_type = ? AND id_value = ?",
                key,
            ).fetchone()
            return Claim(*row)

        return await self.db.transaction(work)

    async def unclaim(self, key: Key, profile_id: str) -> bool:
        return await self._changed(
            "DELETE FROM identity_claims WHERE id_type = ? AND id_value = ? AND profile_id = ?", (*key, profile_id)
        )

    async def record_erasures(self, hashes: Sequence[str], at: int) -> None:
        def work(db):
            db.executemany("INSERT OR IGNORE INTO identity_erasures VALUES (?, ?)", [(h, at) for h in hashes])

        await self.db.transaction(work)

    async def erased(self, hashes: Sequence[str]) -> set[str]:
        rows = await self.db.execute(
            f"SELECT id_hash FROM identity_erasures WHERE id_hash IN ({', '.join('?' * len(hashes))})", tuple(hashes)
        )
        return {row[0] for row in rows}

    async def setting(self, name: str, proposed: str) -> str:
        def work(db) -> str:
            db.execute("INSERT OR IGNORE INTO identity_settings VALUES (?, ?)", (name, proposed))
            return db.execute("SELECT value FROM identity_settings WHERE name = ?", (name,)).fetchone()[0]

        return await self.db.transaction(work)

    async def profiles(self, profile_ids: Sequence[str]) -> dict[str, ProfileRow]:
        # A statement a chunk of ids, with no write lock (as claims).
        found = {}
        ids = list(profile_ids)
        for first in range(0, len(ids), READ_CHUNK):
            chunk = ids[first : first + READ_CHUNK]
            rows = await self.db.execute(f"{_PROFILE} WHERE profile_id IN ({', '.join('?' for _ in chunk)})", chunk)
            for profile_id, created_at, created_by, merged_into, merge_id, holder, lease_until, never_merge in rows:
                never = frozenset(filter(None, never_merge.split("\n")))
                found[profile_id] = ProfileRow(
                    profile_id, created_at, created_by, merged_into, merge_id, holder, lease_until, never
                )
        return found

    async def create_locked(
        self, profile_id: str, created_at: int, event_id: str, holder: str, lease_until: int
    ) -> bool:
        return await self._changed(
            "INSERT OR IGNORE INTO identity_profiles (profile_id, created_at, created_by, holder, lease_until)"
            " VALUES (?, ?, ?, ?, ?)",
            (profile_id, created_at, event_id, holder, lease_until),
        )

    async def lock(self, profile_id: str, holder: str, now: int, lease_until: int) -> tuple[bool, str | None]:
        def work(db):
            changed = db.execute(
                "UPDATE identity_profiles SET holder = ?, lease_until = ? WHERE profile_id = ?"
                " AND lease_until < ? AND merged_into = ''",
                (holder, lease_until, profile_id, now),
            ).rowcount
            if changed:
                return True, ""
            row = db.execute("SELECT merged_into FROM identity_profiles WHERE profile_id = ?", (profile_id,)).fetchone()
            return False, row[0] if row else None

        return await self.db.transaction(work)

    async def delete_locked(self, profile_id: str, holder: str) -> bool:
        return await self._changed(
            "DELETE FROM identity_profiles WHERE profile_id = ? AND holder = ?", (profile_id, holder)
        )

    async def unlock(self, profile_id: str, holder: str) -> None:
        await self._changed(
            "UPDATE identity_profiles SET holder = '', lease_until = 0 WHERE profile_id = ? AND holder = ?",
            (profile_id, holder),
        )

    async def merge_into(self, profile_id: str, survivor: str, merge_id: str, holder: str) -> bool:
        return await self._changed(
            "UPDATE identity_profiles SET merged_into = ?, merge_id = ?, holder = '', lease_until = 0"
            " WHERE profile_id = ? AND holder = ?",
            (survivor, merge_id, profile_id, holder),
        )

    async def unmerge(self, profile_id: str, survivor: str, never_merge: str) -> bool:
        return await self._changed(
            "UPDATE identity_profiles SET merged_into = '', merge_id = '', never_merge = never_merge || ? || char(10)"
            " WHERE profile_id = ? AND merged_into = ?",
            (never_merge, profile_id, survivor),
        )

    async def members(self, profile_ids: Sequence[str]) -> dict[str, list[Member]]:
        found = {}
        for profile_id in profile_ids:
            rows = await self.db.execute(
                "SELECT id_type, id_value, first_seen, event_id, source FROM identity_members WHERE profile_id = ?",
                (profile_id,),
            )
            found[profile_id] = [Member(*row) for row in rows]
        return found

    async def add_members(self, profile_id: str, members: Sequence[Member]) -> None:
        def work(db):
            db.executemany(
                "INSERT OR REPLACE INTO identity_members VALUES (?, ?, ?, ?, ?, ?)",
                [(profile_id, m.id_type, m.id_value, m.first_seen, m.event_id, m.source) for m in members],
            )

        await self.db.transaction(work)

    async def remove_member(self, profile_id: str, key: Key) -> None:
        await self.db.execute(
            "DELETE FROM identity_members WHERE profile_id = ? AND id_type = ? AND id_value = ?", (profile_id, *key)
        )

    async def children(self, profile_id: str) -> list[str]:
        rows = await self.db.execute("SELECT child FROM identity_children WHERE profile_id = ?", (profile_id,))
        return [row[0] for row in rows]

    async def add_child(self, profile_id: str, child: str) -> None:
        await self.db.execute("INSERT OR IGNORE INTO identity_children VALUES (?, ?)", (profile_id, child))

    async def remove_child(self, profile_id: str, child: str) -> None:
        await self.db.execute("DELETE FROM identity_children WHERE profile_id = ? AND child = ?", (profile_id, child))

    async def save_merge(self, record: identity_pb2.MergeRecord) -> None:
        def work(db):
            db.execute(
                "INSERT OR REPLACE INTO identity_merges VALUES (?, ?)", (record.merge_id, record.SerializeToString())
            )
            for profile_id in (record.survivor_profile_id, record.merged_profile_id):
                db.execute("INSERT OR IGNORE INTO identity_profile_merges VALUES (?, ?)", (profile_id, record.merge_id))

        await self.db.transaction(work)

    async def merge(self, merge_id: str) -> identity_pb2.MergeRecord | None:
        rows = await self.db.execute("SELECT record FROM identity_merges WHERE merge_id = ?", (merge_id,))
        return identity_pb2.MergeRecord.FromString(rows[0][0]) if rows else None

    async def merges_of(self, profile_id: str) -> list[identity_pb2.MergeRecord]:
        rows = await self.db.execute(
            "SELECT m.record FROM identity_profile_merges p JOIN identity_merges m USING (merge_id) WHERE p.profile_id = ?",
            (profile_id,),
        )
        records = [identity_pb2.MergeRecord.FromString(row[0]) for row in rows]
        return sorted(records, key=lambda r: (r.merged_at.ToMilliseconds(), r.merge_id))

    async def save_unlinked(self, records: Sequence[identity_pb2.Unlinked]) -> None:
        def work(db):
            db.executemany(
                "INSERT OR REPLACE INTO identity_unlinked VALUES (?, ?, ?, ?)",
                [(r.profile_id, r.identifier.type, r.identifier.value, r.SerializeToString()) for r in records],
            )

        await self.db.transaction(work)

    async def unlinked_of(self, profile_id: str, limit: int = 200) -> list[identity_pb2.Unlinked]:
        rows = await self.db.execute(
            "SELECT record FROM identity_unlinked WHERE profile_id = ? ORDER BY id_type, id_value LIMIT ?",
            (profile_id, limit),
        )
        return [identity_pb2.Unlinked.FromString(row[0]) for row in rows]

    async def touch_many(self, sightings: Mapping[Key, tuple[str, int]]) -> None:
        def work(db):
            db.executemany(
                "INSERT INTO identity_sightings VALUES (?, ?, ?, ?) ON CONFLICT (profile_id, id_type, id_value)"
                " DO UPDATE SET last_seen = excluded.last_seen WHERE excluded.last_seen > last_seen",
                [(home, *key, at) for key, (home, at) in sightings.items()],
            )

        await self.db.transaction(work)

    async def forget_sightings(self, homes: Sequence[str]) -> None:
        if homes:
            await self.db.execute(
                f"DELETE FROM identity_sightings WHERE profile_id IN ({', '.join('?' * len(homes))})", tuple(homes)
            )

    async def last_seen(self, homes: Sequence[str]) -> dict[Key, int]:
        if not homes:
            return {}
        rows = await self.db.execute(
            "SELECT id_type, id_value, last_seen FROM identity_sightings"
            f" WHERE profile_id IN ({', '.join('?' * len(homes))})",
            tuple(homes),
        )
        return {(id_type, id_value): at for id_type, id_value, at in rows}

    async def record_links(self, links: Sequence[Link]) -> None:
        def work(db):
            db.executemany(
                "INSERT OR IGNORE INTO identity_links VALUES (?, ?, ?)",
                [(link.at, link.event_id, encode_keys(link.identifiers)) for link in links],
            )

        await self.db.transaction(work)

    async def links(self, limit: int) -> list[Link]:
        rows = await self.db.execute(
            "SELECT at, event_id, identifiers FROM identity_links ORDER BY at, event_id LIMIT ?", (limit,)
        )
        return [Link(at, event_id, decode_keys(text)) for at, event_id, text in rows]

    async def outbox_put(self, entry: OutboxEntry) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO identity_outbox VALUES (?, ?, ?, ?)",
            (entry.message_id, entry.topic, entry.key, entry.payload),
        )

    async def outbox_pending(self, limit: int = 100) -> list[OutboxEntry]:
        rows = await self.db.execute(
            "SELECT message_id, topic, key, payload FROM identity_outbox ORDER BY message_id LIMIT ?", (limit,)
        )
        return [OutboxEntry(*row) for row in rows]

    async def outbox_done(self, message_id: str) -> None:
        await self.db.execute("DELETE FROM identity_outbox WHERE message_id = ?", (message_id,))

    async def load_rules(self) -> identity_pb2.IdentityRules | None:
        rows = await self.db.execute("SELECT rules FROM identity_rules WHERE name = 'current'")
        return identity_pb2.IdentityRules.FromString(rows[0][0]) if rows else None

    async def save_rules(self, rules: identity_pb2.IdentityRules, expected_version: int) -> bool:
        if expected_version == 0:
            return await self._changed(
                "INSERT OR IGNORE INTO identity_rules VALUES ('current', ?, ?)",
                (rules.version, rules.SerializeToString()),
            )
        return await self._changed(
            "UPDATE identity_rules SET version = ?, rules = ? WHERE name = 'current' AND version = ?",
            (rules.version, rules.SerializeToString(), expected_version),
        )

    async def _changed(self, sql: str, params: Sequence) -> bool:
        return await self.db.transaction(lambda db: db.execute(sql, params).rowcount > 0)
