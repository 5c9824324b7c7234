"""The consent service's settings: the platform's, plus its own from MOSAIC_CONSENT_*."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mosaic.platform import topics
from mosaic.platform.config import Env, ServiceSettings
from mosaic.platform.consent import Policy, Purpose

# The services with a privacy participant (mosaic.platform.privacy.Participant), as registered.
DEFAULT_PARTICIPANTS = tuple(sorted(topics.PARTICIPANTS))


@dataclass(frozen=True)
class Settings(ServiceSettings):
    SERVICE = "consent"
    # Purposes, the default law and Segment's categories (MOSAIC_CONSENT_PURPOSES, _JURISDICTION, _CATEGORIES).
    policy: Policy = field(default_factory=Policy)
    cache_size: int = 100_000
    cache_seconds: float = 60.0
    identity_address: str = ""
    participants: tuple[str, ...] = DEFAULT_PARTICIPANTS
    export_days: float = 30.0

    @property
    def purposes(self) -> dict[str, Purpose]:
        return self.policy.purposes

    @property
    def jurisdiction(self) -> int:
        return self.policy.jurisdiction

    @classmethod
    def own(cls, env: Env) -> dict[str, Any]:
        return dict(
            policy=Policy.from_env(env.environ),
            cache_size=env.int("MOSAIC_CONSENT_CACHE_SIZE", 100_000, minimum=1),
            # The longest a cached answer is trusted when a consent.changed notice was missed.
            cache_seconds=env.float("MOSAIC_CONSENT_CACHE_SECONDS", 60.0),
            # Where identifiers of privacy requests are resolved; unset: requests name profile ids.
            identity_address=env.environ.get("MOSAIC_IDENTITY_ADDRESS", "").strip(),
            # The services that must answer a privacy request before it completes.
            participants=env.list("MOSAIC_PRIVACY_PARTICIPANTS", ",".join(DEFAULT_PARTICIPANTS)),
            # How long a completed export's document is kept for the requester to fetch.
            export_days=env.float("MOSAIC_PRIVACY_EXPORT_DAYS", 30.0, minimum=0.01),
        )
