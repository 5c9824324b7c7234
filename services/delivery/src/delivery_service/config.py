from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from delivery_service.ssrf import CLASSES, AddressPolicy
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
            breaker_threshold=env.int("MOSAIC_DELIVERY_BREAKER_FAILURES", 5, minimum=1, maximum=1000),
            breaker_cooldown=env.float("MOSAIC_DELIVERY_BREAKER_COOLDOWN_SECONDS", 2.0, minimum=0.01),
            destinations_refresh=env.float("MOSAIC_DELIVERY_DESTINATIONS_REFRESH_SECONDS", 5.0, minimum=0.1),
            ingestion_address=env.str("MOSAIC_INGESTION_ADDRESS", "-").strip("-"),
            identity_address=env.str("MOSAIC_IDENTITY_ADDRESS", "-").strip("-"),
            engagement_secret=_secret(env.str("MOSAIC_DELIVERY_ENGAGEMENT_SECRET", "-").strip("-")),
            http_port=env.int("MOSAIC_DELIVERY_HTTP_PORT", 0, maximum=65535),
        )


def _secret(value: str) -> str:
    if value and not value.startswith("whsec_"):
        raise ConfigError("MOSAIC_DELIVERY_ENGAGEMENT_SECRET", "must be a Standard Webhooks secret: whsec_ and base64")
    return value
