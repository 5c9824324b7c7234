"""The embedded backend: one SQLite file per service, for a single machine and quick tests.

Every statement runs on the event loop's own thread, one at a time, on one connection: in WAL
mode with synchronous=NORMAL a statement takes microseconds, while handing it to a worker thread
cost ~50 µs of CPU per call (bench: the hop measured against an indexed SELECT), several times per
event. Running inline also serialises writers the way a single Cassandra LWT would, and a
`transaction` (BEGIN IMMEDIATE ... COMMIT around a plain function, never an await) cannot
interleave with another coroutine's statements. The cost: while another local process (a second
replica on the same file) holds the write lock, the loop waits for it, up to busy_timeout.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import tenacity

from mosaic.platform import retry
from mosaic.platform.store import Migration

T = TypeVar("T")

WAL_CHECKPOINT_PAGES = 10_000


def _locked(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


class SqliteStore:
    """A SQLite database with the service's schema migrated."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    async def open(self, migrations: Sequence[Migration]) -> None:
        self._open(migrations)

    def _open(self, migrations: Sequence[Migration]) -> None:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        # Another replica making the file WAL at this moment fails this one at once, busy_timeout
        # or not: asked again until it is done.
        for attempt in tenacity.Retrying(
            retry=tenacity.retry_if_exception(_locked),
            wait=retry.wait(0.01, 0.2, jitter=True),
            stop=tenacity.stop_after_delay(5),
            reraise=True,
        ):
            with attempt:
                db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        # A checkpoint copies each page the WAL holds back into the database once, however often
        # it was written since: every 10,000 pages (~40 MB of WAL) instead of SQLite's 1,000, a
        # batch's hot pages (interior nodes, the ends of append-only indexes) are copied ~10x
        # less often: profile's write of a batch takes ~20 % less CPU (`python -m bench
        # sqlite_checkpoint`).
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)")
        for migration in sorted(migrations, key=lambda m: m.version):
            # Whether it is applied is read under the write lock: replicas opening one file
            # together would otherwise both apply it.
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)).fetchone():
                db.execute("COMMIT")
                continue
            for statement in migration.statements:
                db.execute(statement)
            db.execute("INSERT INTO schema_migrations VALUES (?, datetime('now'))", (migration.version,))
            db.execute("COMMIT")
        self._db = db

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode; returns its rows."""
        return self._connection().execute(sql, params).fetchall()

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(connection)` atomically."""

        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            value = work(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return value

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connection(self) -> sqlite3.Connection:
        assert self._db is not None, "store not open"
        return self._db
