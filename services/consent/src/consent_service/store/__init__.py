"""Consent's store: the contract (base.py) and its records (model.py), on Cassandra and on
SQLite, each backend with its migrations; `open_store` opens the configured one."""

from __future__ import annotations

from consent_service.store.base import ConsentStore
from consent_service.store.cassandra import MIGRATIONS as CASSANDRA
from consent_service.store.cassandra import CassandraConsentStore
from consent_service.store.model import Expiry, MergeRecord, Move, OutboxEntry, micros, timestamp
from consent_service.store.sqlite import MIGRATIONS as SQLITE
from consent_service.store.sqlite import SqliteConsentStore
from mosaic.platform.config import PlatformSettings
from mosaic.platform.store import open_repository

__all__ = ["ConsentStore", "Expiry", "MergeRecord", "Move", "OutboxEntry", "micros", "open_store", "timestamp"]


async def open_store(settings: PlatformSettings) -> ConsentStore:
    return await open_repository(
        settings, "consent", cassandra=(CASSANDRA, CassandraConsentStore), sqlite=(SQLITE, SqliteConsentStore)
    )
