"""The local Cassandra node (started by deploy/local/cassandra.sh), a keyspace per test module."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from cassandra.cluster import Cluster

from mosaic.platform.config import CassandraSettings

REPO = Path(__file__).resolve().parents[5]


def ensure_node() -> int:
    """Start the node if it is not running (idempotent); returns its CQL port."""
    port = int(os.environ.get("CASSANDRA_PORT", "9042"))
    subprocess.run([str(REPO / "deploy/local/cassandra.sh"), "start"], check=True, stdout=subprocess.DEVNULL)
    return port


def node_pid() -> int | None:
    """The local node's process id (its pid file), for a bench that measures the node's CPU."""
    pidfile = REPO / ".local/cassandra/cassandra.pid"
    return int(pidfile.read_text()) if pidfile.exists() else None


def new_keyspace_settings(port: int, prefix: str = "test") -> CassandraSettings:
    return CassandraSettings(
        hosts=("127.0.0.1",),
        port=port,
        keyspace=f"{prefix}_{uuid.uuid4().hex[:12]}",
        replication_factor=1,
        local_dc="datacenter1",
    )


def drop_keyspace(settings: CassandraSettings) -> None:
    cluster = Cluster(list(settings.hosts), port=settings.port, protocol_version=5)
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {settings.keyspace}", timeout=60)
    finally:
        cluster.shutdown()
