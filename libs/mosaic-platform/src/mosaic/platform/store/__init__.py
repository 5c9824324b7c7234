"""Store backends: Cassandra for production, SQLite embedded for one machine.

Each service defines its own repository interface and implements it on both backends with the
helpers here: connection, versioned schema migrations applied at start, and async execution.
One contract suite per service runs against both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One schema version of a service: statements applied once, in order."""

    version: int
    statements: tuple[str, ...]


class Repository:
    """Base of a service's repository on one backend: holds the backend and closes it."""

    def __init__(self, db) -> None:
        self.db = db

    async def close(self) -> None:
        await self.db.close()


async def open_repository(
    settings, service: str, cassandra: tuple[Sequence[Migration], type], sqlite: tuple[Sequence[Migration], type]
):
    """Open the configured backend (`MOSAIC_STORE`) with the service's migrations applied, and
    return the service's repository on it: `cassandra` and `sqlite` are (migrations, class)."""
    if settings.store == "cassandra":
        from mosaic.platform.store.cassandra import CassandraStore

        migrations, repository = cassandra
        db: CassandraStore | SqliteStore = CassandraStore(settings.cassandra, service)
    else:
        from mosaic.platform.store.sqlite import SqliteStore

        migrations, repository = sqlite
        db = SqliteStore(settings.data_dir / f"{service}.db")
    await db.open(migrations)
    return repository(db)
