"""The identity service's settings: the platform's, plus its own from MOSAIC_IDENTITY_*."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mosaic.platform.config import ConfigError, Env, ServiceSettings


@dataclass(frozen=True)
class Settings(ServiceSettings):
    SERVICE = "identity"
    rules_max_age: float = 5.0
    lease_seconds: float = 15.0
    phone_region: str = "US"
    root_cache_seconds: float = 30.0
    sightings_flush_seconds: float = 1.0

    @classmethod
    def own(cls, env: Env) -> dict[str, Any]:
        region = env.str("MOSAIC_IDENTITY_PHONE_REGION", "US").upper()
        if len(region) != 2 or not region.isalpha():
            raise ConfigError("MOSAIC_IDENTITY_PHONE_REGION", f"must be a two-letter region code, got {region!r}")
        return dict(
            # How stale the rules may be on a replica after UpdateRules.
            rules_max_age=env.float("MOSAIC_IDENTITY_RULES_MAX_AGE", 5.0),
            # How long a crashed replica's lock on a profile blocks others. Longer than the store's
            # 10 s request timeout, so a live holder's slowest request still ends inside its lease.
            lease_seconds=env.float("MOSAIC_IDENTITY_LOCK_LEASE", 15.0, minimum=0.5),
            phone_region=region,
            # The longest a root cached for the event path is trusted when a notice of another
            # replica's merge or split was missed (NATS reconnecting); notices normally drop it at once.
            root_cache_seconds=env.float("MOSAIC_IDENTITY_ROOT_CACHE_SECONDS", 30.0),
            # How often identifiers' last sightings are written (a crash loses at most this much).
            sightings_flush_seconds=env.float("MOSAIC_IDENTITY_SIGHTINGS_FLUSH_SECONDS", 1.0, minimum=0.05),
        )
