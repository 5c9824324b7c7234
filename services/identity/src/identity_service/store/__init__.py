"""The identity graph's store: the contract (base.py) and its records (model.py), on Cassandra
and on SQLite, each backend with its migrations; `open_store` opens the configured one."""

from __future__ import annotations

from identity_service.store.base import IdentityStore
from identity_service.store.cassandra import MIGRATIONS as CASSANDRA
from identity_service.store.cassandra import CassandraIdentityStore
from identity_service.store.model import Claim, Key, Link, Member, OutboxEntry, decode_keys
from identity_service.store.sqlite import MIGRATIONS as SQLITE
from identity_service.store.sqlite import SqliteIdentityStore
from mosaic.platform.config import PlatformSettings
from mosaic.platform.store import open_repository

__all__ = ["Claim", "IdentityStore", "Key", "Link", "Member", "OutboxEntry", "decode_keys", "open_store"]


async def open_store(settings: PlatformSettings) -> IdentityStore:
    return await open_repository(
        settings, "identity", cassandra=(CASSANDRA, CassandraIdentityStore), sqlite=(SQLITE, SqliteIdentityStore)
    )
