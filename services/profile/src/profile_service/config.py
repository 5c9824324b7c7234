from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mosaic.platform.config import Env, ServiceSettings


@dataclass(frozen=True)
class Settings(ServiceSettings):
    SERVICE = "profile"
    source_priority: tuple[str, ...]
    counter_days: int
    archive_days: int
    full_every: int
    cache_size: int

    @classmethod
    def own(cls, env: Env) -> dict[str, Any]:
        priority = env.str("MOSAIC_PROFILE_SOURCE_PRIORITY", "-")
        return dict(
            source_priority=() if priority == "-" else env.list("MOSAIC_PROFILE_SOURCE_PRIORITY", priority),
            counter_days=env.int("MOSAIC_PROFILE_COUNTER_DAYS", 90, minimum=1, maximum=3650),
            archive_days=env.int("MOSAIC_PROFILE_ARCHIVE_DAYS", 90, minimum=1, maximum=3650),
            full_every=env.int("MOSAIC_PROFILE_FULL_EVERY", 20, minimum=1, maximum=10_000),
            cache_size=env.int("MOSAIC_PROFILE_CACHE_SIZE", 100_000, minimum=0),
        )
