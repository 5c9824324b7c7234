"""Configuration from environment variables into frozen dataclasses.

A missing or malformed variable stops the service at start with `ConfigError`, whose message
names the variable and the rule it broke. Tests pass their own mapping instead of os.environ.
"""

from __future__ import annotations

import builtins
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

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

    @property
    def environ(self) -> Mapping[str, str]:
        """The mapping itself, for the rare value parsed by its own rules."""
        return self._environ

    def str(self, name: str, default: str | None = None) -> str:
        value = self._environ.get(name, "").strip()
        if value:
            return value
        if default is None:
            raise ConfigError(name, "is required and not set")
        return default

    def int(self, name: builtins.str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
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

    def float(self, name: builtins.str, default: float, *, minimum: float = 0.0) -> float:
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

    def choice(self, name: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...]) -> builtins.str:
        value = self.str(name, default)
        if value not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def bool(self, name: builtins.str, default: bool) -> bool:
        raw = self._environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw not in ("true", "false"):
            raise ConfigError(name, f"must be true or false, got {raw!r}")
        return raw == "true"

    def file(self, name: builtins.str) -> builtins.str:
        """An optional path to a file that must exist (certificates, keys, key sets)."""
        value = self._environ.get(name, "").strip()
        if value and not Path(value).is_file():
            raise ConfigError(name, f"must name a readable file, got {value!r}")
        return value

    def list(self, name: builtins.str, default: builtins.str) -> tuple[builtins.str, ...]:
        items = tuple(item.strip() for item in self.str(name, default).split(","))
        if not all(items):
            raise ConfigError(name, "must be a comma-separated list with no empty items")
        return items


@dataclass(frozen=True)
class TlsSettings:
    """TLS towards a dependency (NATS, Cassandra): the CA to trust, an optional client
    certificate, and the name the server's certificate must carry (its address otherwise)."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""

    @classmethod
    def from_env(cls, env: Env, prefix: str) -> TlsSettings:
        settings = cls(
            env.file(f"{prefix}_CA"),
            env.file(f"{prefix}_CERT"),
            env.file(f"{prefix}_KEY"),
            env.str(f"{prefix}_SERVER_NAME", ""),
        )
        if bool(settings.cert) != bool(settings.key):
            raise ConfigError(
                f"{prefix}_KEY" if settings.cert else f"{prefix}_CERT", f"{prefix}_CERT and {prefix}_KEY go together"
            )
        if (settings.cert or settings.server_name) and not settings.ca:
            raise ConfigError(f"{prefix}_CA", "is required for TLS (the CA that signed the server's certificate)")
        return settings

    @property
    def enabled(self) -> bool:
        return bool(self.ca)

    def context(self) -> ssl.SSLContext | None:
        """A client context that verifies the server (and presents our certificate), or None."""
        if not self.ca:
            return None
        context = ssl.create_default_context(cafile=self.ca)
        if self.cert:
            context.load_cert_chain(self.cert, self.key)
        return context


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
    tls: TlsSettings = TlsSettings()


# Traits that name or locate a person, masked for callers without `profiles:read_pii`.
PII_TRAITS = (
    "email,phone,name,first_name,last_name,firstName,lastName,address,street,"
    "postal_code,postalCode,birthday,date_of_birth,ip"
)


@dataclass(frozen=True)
class SecuritySettings:
    """Who may call this service and how its traffic is protected (see mosaic.platform.auth).

    `auth` is `required` unless a deployment says `off` outright: a service without any way to
    authenticate callers refuses to start rather than serve personal data to anyone.
    """

    auth: str = "off"
    jwks: str = ""  # a JWKS file or https URL: bearer tokens (JWT) signed by these keys
    issuer: str = ""  # the `iss` tokens must carry, when set
    audience: str = "mosaic"  # the `aud` tokens must carry
    tls_cert: str = ""  # this service's certificate (PEM): gRPC over TLS, and its client cert
    tls_key: str = ""
    client_ca: str = ""  # the CA of callers' certificates: mutual TLS
    cert_scopes: str = ""  # JSON file: certificate identity -> scopes
    ca: str = ""  # the CA this service trusts when it calls another
    token_file: str = ""  # a bearer token this service presents when it calls another
    reflection: bool = True
    audit_retention_days: int = 365
    audit_salt: str = ""  # keys the hashes of audit subjects; empty: the deployment's, kept in NATS
    pii_traits: tuple[str, ...] = ()  # traits masked for callers without profiles:read_pii

    @classmethod
    def from_env(cls, env: Env) -> SecuritySettings:
        jwks = env.str("MOSAIC_AUTH_JWKS", "")
        settings = cls(
            auth=env.choice("MOSAIC_AUTH", "required", ("required", "off")),
            jwks=jwks if jwks.startswith("https://") else env.file("MOSAIC_AUTH_JWKS"),
            issuer=env.str("MOSAIC_AUTH_ISSUER", ""),
            audience=env.str("MOSAIC_AUTH_AUDIENCE", "mosaic"),
            tls_cert=env.file("MOSAIC_TLS_CERT"),
            tls_key=env.file("MOSAIC_TLS_KEY"),
            client_ca=env.file("MOSAIC_TLS_CLIENT_CA"),
            cert_scopes=env.file("MOSAIC_AUTH_CERT_SCOPES"),
            ca=env.file("MOSAIC_TLS_CA"),
            token_file=env.file("MOSAIC_AUTH_TOKEN_FILE"),
            reflection=env.bool("MOSAIC_GRPC_REFLECTION", True),
            audit_retention_days=env.int("MOSAIC_AUDIT_RETENTION_DAYS", 365, minimum=1, maximum=3650),
            audit_salt=env.str("MOSAIC_AUDIT_SALT", ""),
            pii_traits=env.list("MOSAIC_PII_TRAITS", PII_TRAITS),
        )
        if bool(settings.tls_cert) != bool(settings.tls_key):
            raise ConfigError(
                "MOSAIC_TLS_KEY" if settings.tls_cert else "MOSAIC_TLS_CERT",
                "MOSAIC_TLS_CERT and MOSAIC_TLS_KEY go together",
            )
        if settings.client_ca and not settings.tls_cert:
            raise ConfigError("MOSAIC_TLS_CERT", "is required with MOSAIC_TLS_CLIENT_CA (mutual TLS needs TLS)")
        if settings.auth == "required" and not (settings.jwks or settings.client_ca):
            raise ConfigError(
                "MOSAIC_AUTH",
                "is required: set MOSAIC_AUTH_JWKS (bearer tokens) and/or "
                "MOSAIC_TLS_CLIENT_CA (mutual TLS), or MOSAIC_AUTH=off for a trial without it",
            )
        return settings


@dataclass(frozen=True)
class PlatformSettings:
    """Settings every service reads; a service adds its own in its config module."""

    service: str
    grpc_port: int
    grace_seconds: float
    nats_url: str
    stream_replicas: int
    stream_max_messages: int
    partitions: int
    store: str
    data_dir: Path
    cassandra: CassandraSettings
    log_level: str
    # How long JetStream drops a second event with the same Nats-Msg-Id on events.raw (the
    # ingestion dedupe window). Every service declares the streams at start, so it is a
    # deployment-wide setting: one service with another value would reset the stream's.
    events_dedup_window: float = 24 * 3600.0
    security: SecuritySettings = SecuritySettings()
    nats_tls: TlsSettings = TlsSettings()
    nats_credentials: str = ""  # a NATS .creds file (user JWT and nkey seed)
    # A plaintext port serving only grpc.health.v1, for Kubernetes' gRPC probes, which cannot
    # speak TLS; 0 = none (health is on the main port too).
    health_port: int = 0
    # The address gRPC (and ingestion's HTTP API) listen on; empty: every interface, as a pod
    # needs. `mosaic run` sets 127.0.0.1, so a laptop's mesh is not open to its network.
    bind_host: str = ""
    # How long a partition's lease outlives its holder's last renewal (mosaic.platform.ownership):
    # the time a dead replica's partitions wait before another takes them.
    lease_seconds: float = 10.0

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None) -> PlatformSettings:
        env = Env(os.environ if environ is None else environ)
        for gone in ("MOSAIC_REPLICA_COUNT", "MOSAIC_REPLICA_INDEX"):
            if env.str(gone, ""):
                # Said at start rather than ignored: a deployment that sets it expects a static
                # split, and must learn that replicas now lease their partitions (README, "Scaling").
                raise ConfigError(gone, "is no longer read: replicas lease their partitions; remove it")
        partitions = env.int("MOSAIC_PARTITIONS", 8, minimum=1, maximum=1024)
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
            lease_seconds=env.float("MOSAIC_LEASE_SECONDS", 10.0, minimum=1.0),
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
                tls=TlsSettings.from_env(env, "MOSAIC_CASSANDRA_TLS"),
            ),
            nats_tls=TlsSettings.from_env(env, "MOSAIC_NATS_TLS"),
            nats_credentials=env.file("MOSAIC_NATS_CREDS"),
            health_port=env.int("MOSAIC_HEALTH_PORT", 0, maximum=65535),
            stream_replicas=env.int("MOSAIC_NATS_STREAM_REPLICAS", 1, minimum=1, maximum=5),
            # Each stream's bound in messages (0: only max_age and the server's own store limit).
            stream_max_messages=env.int("MOSAIC_NATS_STREAM_MAX_MESSAGES", 0, maximum=2**50),
            log_level=env.choice("MOSAIC_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            # At most events.raw's max_age (7 days): JetStream refuses a longer window.
            events_dedup_window=float(
                env.int("MOSAIC_EVENTS_DEDUP_WINDOW_SECONDS", 24 * 3600, minimum=1, maximum=7 * 24 * 3600)
            ),
            security=SecuritySettings.from_env(env),
        )


@dataclass(frozen=True)
class ServiceSettings:
    """A service's settings: the platform's (`platform`) and the service's own fields.

    Every service's `config.Settings` subclasses it the same way: `SERVICE` names the service,
    its fields follow `platform`, and `own(env)` reads them (by keyword) from the environment.
    """

    SERVICE: ClassVar[str] = ""
    platform: PlatformSettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, platform: PlatformSettings | None = None) -> Self:
        """Read the settings; tests pass their own mapping and, if they have one, the platform's."""
        environ = os.environ if environ is None else environ
        return cls(platform or PlatformSettings.from_env(cls.SERVICE, environ), **cls.own(Env(environ)))

    @classmethod
    def own(cls, env: Env) -> dict[str, Any]:
        """The service's own fields, read from `env` (none here)."""
        return {}
