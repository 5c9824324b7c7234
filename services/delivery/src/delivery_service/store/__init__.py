"""Delivery's store: the contract (base.py) and its records (model.py), on Cassandra and on
SQLite, each backend with its migrations; `open_store` opens the configured one."""

from __future__ import annotations

from delivery_service.store.base import DeliveryStore
from delivery_service.store.cassandra import MIGRATIONS as CASSANDRA
from delivery_service.store.cassandra import CassandraDeliveryStore
from delivery_service.store.sqlite import MIGRATIONS as SQLITE
from delivery_service.store.sqlite import SqliteDeliveryStore
from mosaic.platform.config import PlatformSettings
from mosaic.platform.store import open_repository

__all__ = ["DeliveryStore", "open_store"]


async def open_store(settings: PlatformSettings, log_ttl: int = 0, dead_letter_ttl: int = 0) -> DeliveryStore:
    """The delivery store; records are kept `log_ttl` seconds, dead letters `dead_letter_ttl` (0: for good)."""
    store = await open_repository(
        settings, "delivery", cassandra=(CASSANDRA, CassandraDeliveryStore), sqlite=(SQLITE, SqliteDeliveryStore)
    )
    store.log_ttl, store.dead_letter_ttl = log_ttl, dead_letter_ttl
    return store
