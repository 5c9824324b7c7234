"""Configuration from environment variables into frozen dataclasses.

A missing or malformed variable stops the service at start with `ConfigError`, whose message
names the variable and the rule it broke. Tests pass their own mapping instead of os.environ.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class ConfigError(ValueError):
    """A configuration variable is missing or malformed."""

    def __init__(self, variable: str, rule: str) -> None:
        super().__init__(f"{variable}: {rule}")
        self.variable = variable
        self.rule = rule


class Env:
    """Typed reads of one environment mapping; every failure names the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def str(self, name: str, default: str | None = None) -> str:
        value = self._environ.get(name, "").strip()
        if value:
            return value
        if default is None:
            raise ConfigError(name, "is required and not set")
        return default

    def int(self, name: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, f"must be a whole number, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise ConfigError(name, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def float(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, f"must be a number, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(name, f"must be at least {minimum}, got {value}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.str(name, default)
        if value not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def list(self, name: str, default: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in self.str(name, default).split(","))
        if not all(items):
            raise ConfigError(name, "must be a comma-separated list with no empty items")
        return items


@dataclass(frozen=True)
class CassandraSettings:
    """Where the Cassandra cluster is and which keyspace this deployment uses."""

    hosts: tuple[str, ...]
    port: int
    keyspace: str
    replication_factor: int
    local_dc: str
    username: str = ""
    password: str = ""


@dataclass(frozen=True)
class PlatformSettings:
    """Settings every service reads; a service adds its own in its config module."""

    service: str
    grpc_port: int
    grace_seconds: float
    nats_url: str
    stream_replicas: int
    partitions: int
    replica_index: int
    replica_count: int
    store: str
    data_dir: Path
    cassandra: CassandraSettings
    log_level: str
    # How long JetStream drops a second event with the same Nats-Msg-Id on events.raw (the
    # ingestion dedupe window). Every service declares the streams at start, so it is a
    # deployment-wide setting: one service with another value would reset the stream's.
    events_dedup_window: float = 24 * 3600.0
    # The address gRPC (and ingestion's HTTP API) listen on; empty: every interface, as a pod
    # needs. `mosaic run` sets 127.0.0.1, so a laptop's mesh is not open to its network.
    bind_host: str = ""

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None) -> PlatformSettings:
        env = Env(os.environ if environ is None else environ)
        replica_count = env.int("MOSAIC_REPLICA_COUNT", 1, minimum=1, maximum=1024)
        partitions = env.int("MOSAIC_PARTITIONS", 8, minimum=1, maximum=1024)
        if replica_count > partitions:
            raise ConfigError(
                "MOSAIC_REPLICA_COUNT", f"must not exceed MOSAIC_PARTITIONS ({partitions})"
            )
        keyspace = env.str("MOSAIC_CASSANDRA_KEYSPACE", "mosaic")
        if not _NAME.match(keyspace):
            raise ConfigError(
                "MOSAIC_CASSANDRA_KEYSPACE",
                "must be lower-case letters, digits and _ (48 at most), starting with a letter",
            )
        return cls(
            service=service,
            grpc_port=env.int("MOSAIC_GRPC_PORT", 0, maximum=65535),
            bind_host=env.str("MOSAIC_BIND_HOST", ""),
            grace_seconds=env.float("MOSAIC_GRACE_SECONDS", 10.0),
            nats_url=env.str("MOSAIC_NATS_URL", "nats://127.0.0.1:4222"),
            partitions=partitions,
            replica_index=env.int("MOSAIC_REPLICA_INDEX", 0, maximum=replica_count - 1),
            replica_count=replica_count,
            store=env.choice("MOSAIC_STORE", "embedded", ("embedded", "cassandra")),
            data_dir=Path(env.str("MOSAIC_DATA_DIR", ".local/data")),
            cassandra=CassandraSettings(
                hosts=env.list("MOSAIC_CASSANDRA_HOSTS", "127.0.0.1"),
                port=env.int("MOSAIC_CASSANDRA_PORT", 9042, minimum=1, maximum=65535),
                keyspace=keyspace,
                replication_factor=env.int("MOSAIC_CASSANDRA_REPLICATION", 1, minimum=1),
                local_dc=env.str("MOSAIC_CASSANDRA_DC", "datacenter1"),
                username=env.str("MOSAIC_CASSANDRA_USERNAME", ""),
                password=env.str("MOSAIC_CASSANDRA_PASSWORD", ""),
            ),
            stream_replicas=env.int("MOSAIC_NATS_STREAM_REPLICAS", 1, minimum=1, maximum=5),
            log_level=env.choice(
                "MOSAIC_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")
            ),
            # At most events.raw's max_age (7 days): JetStream refuses a longer window.
            events_dedup_window=float(
                env.int("MOSAIC_EVENTS_DEDUP_WINDOW_SECONDS", 24 * 3600, minimum=1, maximum=7 * 24 * 3600)
            ),
        )

    @property
    def owned_partitions(self) -> tuple[int, ...]:
        """The partitions this replica consumes: a static split by replica index."""
        return tuple(
            p for p in range(self.partitions) if p % self.replica_count == self.replica_index
        )


@dataclass(frozen=True)
class ServiceSettings:
    """The settings of a service with nothing of its own; subclasses name the service."""

    SERVICE: ClassVar[str] = ""
    platform: PlatformSettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        return cls(PlatformSettings.from_env(cls.SERVICE, environ))
