from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mosaic.platform.config import Env, PlatformSettings


@dataclass(frozen=True)
class Settings:
    platform: PlatformSettings
    source_priority: tuple[str, ...]
    counter_days: int
    archive_days: int
    full_every: int
    cache_size: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        env = Env(environ)
        priority = env.str("MOSAIC_PROFILE_SOURCE_PRIORITY", "-")
        return cls(
            platform=PlatformSettings.from_env("profile", environ),
            source_priority=() if priority == "-" else env.list("MOSAIC_PROFILE_SOURCE_PRIORITY", priority),
            counter_days=env.int("MOSAIC_PROFILE_COUNTER_DAYS", 90, minimum=1, maximum=3650),
            archive_days=env.int("MOSAIC_PROFILE_ARCHIVE_DAYS", 90, minimum=1, maximum=3650),
            full_every=env.int("MOSAIC_PROFILE_FULL_EVERY", 20, minimum=1, maximum=10_000),
            cache_size=env.int("MOSAIC_PROFILE_CACHE_SIZE", 100_000, minimum=0),
        )
