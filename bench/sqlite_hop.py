"""What a worker-thread hop costs an embedded-store statement, against running it inline.

The embedded backend (mosaic.platform.store.sqlite) runs its statements on the event loop's
thread. This measures why: the CPU of an indexed SELECT on a WAL database run inline, and the
same statement handed to a one-thread executor with `run_in_executor` (as the backend did
before), per call, in process CPU time (both threads counted).
Run: `uv run --frozen python -m bench sqlite_hop` (BENCH_CALLS sets the count, 20,000 by default).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CALLS = int(os.environ.get("BENCH_CALLS", "20000"))
ROWS = 10_000


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        db = sqlite3.connect(Path(directory) / "hop.db", isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
        db.executemany("INSERT INTO t VALUES (?, ?)", [(str(i), "x" * 100) for i in range(ROWS)])

        def query(i: int) -> list:
            return db.execute("SELECT v FROM t WHERE k = ?", (str(i % ROWS),)).fetchall()

        started = time.process_time()
        for i in range(CALLS):
            query(i)
        inline = (time.process_time() - started) / CALLS
        executor, loop = ThreadPoolExecutor(max_workers=1), asyncio.get_running_loop()
        started = time.process_time()
        for i in range(CALLS):
            await loop.run_in_executor(executor, query, i)
        hopped = (time.process_time() - started) / CALLS
        executor.shutdown()
        db.close()
    print(
        f"indexed SELECT, {CALLS:,} calls: inline {inline * 1e6:.1f} µs CPU each; through a worker thread {hopped * 1e6:.1f} µs"
    )
