from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from delivery_service.schedule import zone_named
from delivery_service.ssrf import CLASSES, AddressPolicy
from mosaic.platform import retention
from mosaic.platform.config import ConfigError, Env, ServiceSettings


@dataclass(frozen=True)
class Settings(ServiceSettings):
    SERVICE = "delivery"
    consent_address: str
    max_attempts: int
    webhook_timeout: float
    # Where templates read traits from; empty: templates see no traits.
    profile_address: str = ""
    # Address classes destinations may reach (SSRF guard): none in production.
    allowed_addresses: tuple[str, ...] = ()
    concurrency: int = 32
    # How long a consent answer the workers read before a send is kept while no change notice
    # names the person (0: the consent service is asked before every send); see consent.py.
    consent_cache_seconds: float = 30.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 2.0
    destinations_refresh: float = 5.0
    # Outcomes and engagement go back through ingestion (as the mosaic-delivery source) when
    # both addresses are set; identity names the person of a profile.
    ingestion_address: str = ""
    identity_address: str = ""
    # The signed engagement endpoint runs when its secret (whsec_...) is set.
    engagement_secret: str = ""
    http_port: int = 0
    # How long delivery records and dead letters are kept (0: for good); how often the
    # embedded store sweeps.
    log_days: float = 180.0
    dead_letter_days: float = 30.0
    sweep_seconds: float = 3600.0

    # Where campaigns list their segment's members; empty: no campaigns.
    segmentation_address: str = ""
    # A person's time zone (for quiet hours) is this trait; without a valid one, default_zone,
    # which is also a campaign's zone when it names none.
    time_zone_trait: str = "timezone"
    default_zone: ZoneInfo = ZoneInfo("UTC")
    campaign_interval: float = 5.0
    campaign_grace: float = 3600.0
    sweep_interval: float = 2.0
    # Where audience syncs with a file_format write their files; None: they cannot be created.
    audience_dir: Path | None = None
    # A CA file SMTP servers' certificates may chain to, besides the system's trust store (a
    # company relay's private CA; the tests' CA).
    smtp_ca: str = ""

    def retention_kinds(self) -> tuple[retention.Kind, ...]:
        return (
            retention.Kind("deliveries", "MOSAIC_DELIVERY_LOG_DAYS", self.log_days, ("delivery_log",)),
            retention.Kind(
                "dead_letters",
                "MOSAIC_DELIVERY_DEAD_LETTER_DAYS",
                self.dead_letter_days,
                ("delivery_dead_letters", "delivery_dead_letters_by_profile"),
            ),
        )

    @property
    def feedback(self) -> bool:
        return bool(self.ingestion_address and self.identity_address)

    @property
    def policy(self) -> AddressPolicy:
        return AddressPolicy(self.allowed_addresses)

    @classmethod
    def own(cls, env: Env) -> dict[str, Any]:
        allowed = tuple(
            a for a in (x.strip() for x in env.environ.get("MOSAIC_DELIVERY_ALLOW_ADDRESSES", "").split(",")) if a
        )
        if set(allowed) - set(CLASSES):
            raise ConfigError(
                "MOSAIC_DELIVERY_ALLOW_ADDRESSES", f"must be a comma-separated list of {', '.join(CLASSES)}"
            )
        return dict(
            consent_address=env.str("MOSAIC_CONSENT_ADDRESS"),
            max_attempts=env.int("MOSAIC_DELIVERY_MAX_ATTEMPTS", 5, minimum=1, maximum=100),
            webhook_timeout=env.float("MOSAIC_WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            profile_address=env.str("MOSAIC_PROFILE_ADDRESS", "-").strip("-"),
            allowed_addresses=allowed,
            concurrency=env.int("MOSAIC_DELIVERY_CONCURRENCY", 32, minimum=1, maximum=1000),
            consent_cache_seconds=env.float("MOSAIC_DELIVERY_CONSENT_CACHE_SECONDS", 30.0, minimum=0.0),
            breaker_threshold=env.int("MOSAIC_DELIVERY_BREAKER_FAILURES", 5, minimum=1, maximum=1000),
            breaker_cooldown=env.float("MOSAIC_DELIVERY_BREAKER_COOLDOWN_SECONDS", 2.0, minimum=0.01),
            destinations_refresh=env.float("MOSAIC_DELIVERY_DESTINATIONS_REFRESH_SECONDS", 5.0, minimum=0.1),
            ingestion_address=env.str("MOSAIC_INGESTION_ADDRESS", "-").strip("-"),
            identity_address=env.str("MOSAIC_IDENTITY_ADDRESS", "-").strip("-"),
            engagement_secret=_secret(env.str("MOSAIC_DELIVERY_ENGAGEMENT_SECRET", "-").strip("-")),
            http_port=env.int("MOSAIC_DELIVERY_HTTP_PORT", 0, maximum=65535),
            # A delivery's record is its idempotency key: it must outlive a redelivery (the
            # streams keep 7 days), so a redelivered change never sends twice.
            log_days=retention.days(env, "MOSAIC_DELIVERY_LOG_DAYS", 180.0, at_least=8),
            dead_letter_days=retention.days(env, "MOSAIC_DELIVERY_DEAD_LETTER_DAYS", 30.0),
            sweep_seconds=env.float("MOSAIC_RETENTION_SWEEP_SECONDS", 3600.0, minimum=1.0),
            segmentation_address=env.str("MOSAIC_SEGMENTATION_ADDRESS", "-").strip("-"),
            time_zone_trait=env.str("MOSAIC_DELIVERY_TIME_ZONE_TRAIT", "timezone"),
            default_zone=_zone(env.str("MOSAIC_DELIVERY_DEFAULT_TIME_ZONE", "UTC")),
            campaign_interval=env.float("MOSAIC_DELIVERY_CAMPAIGN_SECONDS", 5.0, minimum=0.05),
            campaign_grace=env.float("MOSAIC_DELIVERY_CAMPAIGN_GRACE_SECONDS", 3600.0),
            sweep_interval=env.float("MOSAIC_DELIVERY_SWEEP_SECONDS", 2.0, minimum=0.05),
            audience_dir=Path(d) if (d := env.str("MOSAIC_DELIVERY_AUDIENCE_DIR", "-").strip("-")) else None,
            smtp_ca=env.file("MOSAIC_DELIVERY_SMTP_TLS_CA"),
        )


def _zone(name: str) -> ZoneInfo:
    zone = zone_named(name)
    if zone is None:
        raise ConfigError("MOSAIC_DELIVERY_DEFAULT_TIME_ZONE", "must be an IANA time zone name, e.g. Europe/Paris")
    return zone


def _secret(value: str) -> str:
    if value and not value.startswith("whsec_"):
        raise ConfigError("MOSAIC_DELIVERY_ENGAGEMENT_SECRET", "must be a Standard Webhooks secret: whsec_ and base64")
    return value
