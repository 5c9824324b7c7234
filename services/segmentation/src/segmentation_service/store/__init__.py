"""Segmentation's store: the contract (base.py) and its records (model.py), on Cassandra and on
SQLite, each backend with its migrations; `open_store` opens the configured one."""

from __future__ import annotations

from mosaic.platform.config import PlatformSettings
from mosaic.platform.store import open_repository
from segmentation_service.store.base import SegmentStore
from segmentation_service.store.cassandra import MIGRATIONS as CASSANDRA
from segmentation_service.store.cassandra import CassandraSegmentStore
from segmentation_service.store.model import Decided, Timer, Transition
from segmentation_service.store.sqlite import MIGRATIONS as SQLITE
from segmentation_service.store.sqlite import SqliteSegmentStore

__all__ = ["Decided", "SegmentStore", "Timer", "Transition", "open_store"]


async def open_store(settings: PlatformSettings) -> SegmentStore:
    return await open_repository(
        settings, "segmentation", cassandra=(CASSANDRA, CassandraSegmentStore), sqlite=(SQLITE, SqliteSegmentStore)
    )
