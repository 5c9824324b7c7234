from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mosaic.platform import retention
from mosaic.platform.config import ConfigError, Env, ServiceSettings
from mosaic.platform.consent import Policy


def parse_trait_purposes(spec: str, policy: Policy, variable: str = "MOSAIC_PROFILE_TRAIT_PURPOSES") -> dict[str, str]:
    """`trait=purpose,prefix*=purpose` as a mapping; every purpose named must be configured."""
    marks: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, purpose = (text.strip() for text in item.partition("="))
        if not sep or not name or name == "*" or "*" in name[:-1]:
            raise ConfigError(variable, f"{item!r} must be trait=purpose or prefix*=purpose")
        if purpose not in policy.purposes:
            raise ConfigError(variable, f"{purpose!r} is not a configured purpose (MOSAIC_CONSENT_PURPOSES)")
        marks[name] = purpose
    return marks


@dataclass(frozen=True)
class Settings(ServiceSettings):
    SERVICE = "profile"
    source_priority: tuple[str, ...]
    counter_days: int
    archive_days: int
    full_every: int
    cache_size: int
    # The deployment's purposes and default law, to tell which traits the person withholds.
    policy: Policy = field(default_factory=Policy)
    # Trait names (or `prefix*`) → the purpose they are kept for.
    trait_purposes: dict[str, str] = field(default_factory=dict)
    # How long snapshots are kept (0: for good); how often the embedded store sweeps.
    snapshot_days: float = 0.0
    sweep_seconds: float = 3600.0

    @classmethod
    def own(cls, env: Env) -> dict[str, Any]:
        priority = env.str("MOSAIC_PROFILE_SOURCE_PRIORITY", "-")
        policy = Policy.from_env(env.environ)
        return dict(
            source_priority=() if priority == "-" else env.list("MOSAIC_PROFILE_SOURCE_PRIORITY", priority),
            counter_days=env.int("MOSAIC_PROFILE_COUNTER_DAYS", 90, minimum=1, maximum=3650),
            archive_days=env.int("MOSAIC_PROFILE_ARCHIVE_DAYS", 90, minimum=1, maximum=3650),
            full_every=env.int("MOSAIC_PROFILE_FULL_EVERY", 20, minimum=1, maximum=10_000),
            cache_size=env.int("MOSAIC_PROFILE_CACHE_SIZE", 100_000, minimum=0),
            policy=policy,
            trait_purposes=parse_trait_purposes(env.environ.get("MOSAIC_PROFILE_TRAIT_PURPOSES", ""), policy),
            # A redelivered event (markers live 14 days) reads back its snapshot: keep them longer.
            snapshot_days=retention.days(env, "MOSAIC_PROFILE_SNAPSHOT_DAYS", 0.0, at_least=14),
            sweep_seconds=env.float("MOSAIC_RETENTION_SWEEP_SECONDS", 3600.0, minimum=1.0),
        )

    def retention_kinds(self) -> tuple[retention.Kind, ...]:
        return (
            retention.Kind("events", "MOSAIC_PROFILE_ARCHIVE_DAYS", self.archive_days, ("profile_events",)),
            retention.Kind(
                "snapshots",
                "MOSAIC_PROFILE_SNAPSHOT_DAYS",
                self.snapshot_days,
                ("profile_snapshots", "profile_snapshot_times"),
            ),
        )
