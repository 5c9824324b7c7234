from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mosaic.platform.config import Env, PlatformSettings


@dataclass(frozen=True)
class Settings:
    platform: PlatformSettings
    consent_address: str
    max_attempts: int
    webhook_timeout: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        env = Env(environ)
        return cls(
            platform=PlatformSettings.from_env("delivery", environ),
            consent_address=env.str("MOSAIC_CONSENT_ADDRESS"),
            max_attempts=env.int("MOSAIC_DELIVERY_MAX_ATTEMPTS", 5, minimum=1, maximum=100),
            webhook_timeout=env.float("MOSAIC_WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1),
        )
