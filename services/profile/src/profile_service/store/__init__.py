"""Profile's store: the contract (base.py) and its records (model.py), on Cassandra and on
SQLite, each backend with its migrations; `open_store` opens the configured one."""

from __future__ import annotations

from mosaic.platform.config import PlatformSettings
from mosaic.platform.store import open_repository
from profile_service.store.base import ProfileStore
from profile_service.store.cassandra import MIGRATIONS as CASSANDRA
from profile_service.store.cassandra import CassandraProfileStore
from profile_service.store.model import BUCKET, MARKER_TTL, Change, Latest, StoredSnapshot, erasure_key, month_of
from profile_service.store.sqlite import MIGRATIONS as SQLITE
from profile_service.store.sqlite import SqliteProfileStore

__all__ = [
    "BUCKET",
    "MARKER_TTL",
    "Change",
    "Latest",
    "ProfileStore",
    "StoredSnapshot",
    "erasure_key",
    "month_of",
    "open_store",
]


async def open_store(settings: PlatformSettings, snapshot_ttl: int = 0) -> ProfileStore:
    """The profile store; snapshots (and their time index) are kept `snapshot_ttl` seconds (0: for good)."""
    store = await open_repository(
        settings, "profile", cassandra=(CASSANDRA, CassandraProfileStore), sqlite=(SQLITE, SqliteProfileStore)
    )
    store.snapshot_ttl = snapshot_ttl
    return store
