"""Every row of every table of a store, and every message of every stream, that mentions a value:
how erasure tests prove nothing is left.

It reads the backend as it is (SQLite's tables from sqlite_master, Cassandra's from
system_schema), so a table added later is scanned too. A value matches as text, or inside a
blob (a serialized protobuf holds its strings as they are).
"""

from __future__ import annotations

import asyncio
from typing import Any


def _mentions(value: Any, needles: list[str]) -> bool:
    if isinstance(value, str):
        return any(n in value for n in needles)
    if isinstance(value, (bytes, bytearray)):
        return any(n.encode() in value for n in needles)
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_mentions(v, needles) for v in value)
    if isinstance(value, dict):
        return any(_mentions(k, needles) or _mentions(v, needles) for k, v in value.items())
    return False


async def rows_mentioning(db: Any, needles: list[str]) -> list[tuple[str, tuple]]:
    """(table, row) of every row of the store `db` (a SqliteStore or CassandraStore) naming any needle."""
    from mosaic.platform.store.cassandra import CassandraStore

    if isinstance(db, CassandraStore):
        return await asyncio.to_thread(_cassandra, db, needles)
    tables = [r[0] for r in await db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    found = []
    for table in tables:
        for row in await db.execute(f'SELECT * FROM "{table}"'):
            if _mentions(tuple(row), needles):
                found.append((table, tuple(row)))
    return found


def _cassandra(db: Any, needles: list[str]) -> list[tuple[str, tuple]]:
    session = db._session
    keyspace = db.settings.keyspace
    tables = [
        r.table_name
        for r in session.execute("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,))
    ]
    found = []
    for table in tables:
        for row in session.execute(f"SELECT * FROM {keyspace}.{table}"):
            if _mentions(tuple(row), needles):
                found.append((table, tuple(row)))
    return found


async def messages_mentioning(nats_url: str, needles: list[str]) -> list[tuple[str, str, int]]:
    """(stream, subject, sequence) of every message of every stream of the server at `nats_url`
    naming any needle, in its payload, its headers (the key travels in one) or its subject."""
    import nats
    import nats.js.errors

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        found = []
        for stream in [str(info.config.name) for info in await js.streams_info()]:
            sequence = 1
            while True:
                try:  # the next message from a sequence: deleted ones are skipped
                    message = await js.get_msg(stream, seq=sequence, subject=">", next=True)
                except nats.js.errors.NotFoundError:
                    break
                assert message.seq is not None and message.subject is not None
                if _mentions(message.subject, needles) or _mentions(
                    [message.data or b"", *(message.headers or {}).values()], needles
                ):
                    found.append((stream, message.subject, message.seq))
                sequence = message.seq + 1
        return found
    finally:
        await nc.close()
