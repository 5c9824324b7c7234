"""The embedded store's file shared by processes: replicas of one service on one machine open it
together, and each schema version is applied once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

# Each process opens the file at the same moment, with thirty versions of plain CREATE TABLE:
# a version applied twice fails ("table already exists").
OPEN_AT = """
import asyncio, sys, time
from mosaic.platform.store import Migration
from mosaic.platform.store.sqlite import SqliteStore

migrations = tuple(Migration(v, (f"CREATE TABLE t{v} (k TEXT PRIMARY KEY)",)) for v in range(1, 31))
store = SqliteStore(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
asyncio.run(store.open(migrations))
asyncio.run(store.close())
"""


def test_replicas_opening_one_file_together_apply_each_version_once(tmp_path: Path) -> None:
    for round_ in range(3):
        path = tmp_path / f"shared-{round_}.db"
        at = str(time.time() + 1.5)  # every process started and waiting by then
        processes = [
            subprocess.Popen([sys.executable, "-c", OPEN_AT, str(path), at], stderr=subprocess.PIPE, text=True)
            for _ in range(6)
        ]
        failures = [process.communicate(timeout=60)[1] for process in processes if process.wait(60) != 0]
        assert failures == []
        with sqlite3.connect(path) as db:
            versions = [row[0] for row in db.execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == list(range(1, 31))
