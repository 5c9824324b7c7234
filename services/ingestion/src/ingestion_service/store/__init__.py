"""Ingestion's store: the contract (base.py) on Cassandra and on SQLite, each backend with its
migrations; `open_store` opens the configured one."""

from __future__ import annotations

from ingestion_service.store.base import IngestionStore
from ingestion_service.store.cassandra import MIGRATIONS as CASSANDRA
from ingestion_service.store.cassandra import CassandraIngestionStore
from ingestion_service.store.sqlite import MIGRATIONS as SQLITE
from ingestion_service.store.sqlite import SqliteIngestionStore
from mosaic.platform.config import PlatformSettings
from mosaic.platform.store import open_repository

__all__ = ["IngestionStore", "open_store"]


async def open_store(settings: PlatformSettings) -> IngestionStore:
    return await open_repository(
        settings, "ingestion", cassandra=(CASSANDRA, CassandraIngestionStore), sqlite=(SQLITE, SqliteIngestionStore)
    )
