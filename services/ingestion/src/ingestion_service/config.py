"""The ingestion service's settings: the platform's, plus the HTTP port and the source defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ingestion_service.consent import Rule, parse_rules
from mosaic.platform.config import Env, ServiceSettings
from mosaic.platform.consent import Policy


@dataclass(frozen=True)
class Settings(ServiceSettings):
    SERVICE = "ingestion"
    http_port: int
    # How long a request's body may take to arrive; past it the answer is 408 and the
    # connection is closed (a body never finished would otherwise hold it for ever).
    http_read_timeout: float
    # Rotated write keys stay valid this long unless the rotation says otherwise.
    key_grace_seconds: float
    # How long a source read from the store is trusted; other replicas see a change within it.
    source_cache_seconds: float
    # Events per second and burst of a source with no rate limit of its own; 0: no limit.
    default_rate: float
    default_burst: int
    # Whether gRPC callers may send for a source id that was never created (no plan, no key,
    # the default rate limit). Off unless asked for: local meshes, demos and tests.
    open_sources: bool
    # The salt of the suppression list's hashes; empty: one is made and kept in the store.
    suppression_salt: str
    # How often the suppression list is read again from the store (changes other replicas saw).
    suppression_refresh_seconds: float
    quarantine_days: int
    # Backpressure (see backlog.py): past this many events not yet acked by one consuming
    # service, senders are told to retry later; 0: no bound. Read every refresh seconds.
    max_backlog: int = 1_000_000
    backlog_refresh_seconds: float = 1.0
    backlog_retry_after: float = 5.0
    # Consent at the door (consent.py): the deployment's purposes, what each forbids storing
    # without it, where identity answers (the ids of a person a notice names), how long a
    # person's consent read from the store is trusted.
    policy: Policy = field(default_factory=Policy)
    consent_rules: tuple[Rule, ...] = ()
    identity_address: str = ""
    consent_cache_seconds: float = 5.0

    @classmethod
    def own(cls, env: Env) -> dict[str, Any]:
        policy = Policy.from_env(env.environ)
        return dict(
            http_port=env.int("MOSAIC_HTTP_PORT", 8080, maximum=65535),
            http_read_timeout=env.float("MOSAIC_HTTP_READ_TIMEOUT_SECONDS", 30.0, minimum=0.1),
            key_grace_seconds=env.float("MOSAIC_INGEST_KEY_GRACE_SECONDS", 24 * 3600.0),
            source_cache_seconds=env.float("MOSAIC_INGEST_SOURCE_CACHE_SECONDS", 5.0),
            default_rate=env.float("MOSAIC_INGEST_RATE_LIMIT", 0.0),
            default_burst=env.int("MOSAIC_INGEST_RATE_BURST", 0),
            open_sources=env.choice("MOSAIC_INGEST_OPEN_SOURCES", "false", ("true", "false")) == "true",
            suppression_salt=env.str("MOSAIC_SUPPRESSION_SALT", ""),
            suppression_refresh_seconds=env.float("MOSAIC_SUPPRESSION_REFRESH_SECONDS", 30.0, minimum=0.1),
            quarantine_days=env.int("MOSAIC_INGEST_QUARANTINE_DAYS", 30, minimum=1, maximum=3650),
            max_backlog=env.int("MOSAIC_INGEST_MAX_BACKLOG", 1_000_000),
            backlog_refresh_seconds=env.float("MOSAIC_INGEST_BACKLOG_REFRESH_SECONDS", 1.0, minimum=0.05),
            backlog_retry_after=env.float("MOSAIC_INGEST_BACKLOG_RETRY_AFTER_SECONDS", 5.0, minimum=0.1),
            policy=policy,
            consent_rules=parse_rules(env.environ.get("MOSAIC_INGEST_CONSENT_RULES", ""), policy),
            identity_address=env.environ.get("MOSAIC_IDENTITY_ADDRESS", "").strip(),
            consent_cache_seconds=env.float("MOSAIC_INGEST_CONSENT_CACHE_SECONDS", 5.0),
        )
