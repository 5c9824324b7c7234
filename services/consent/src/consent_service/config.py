"""The consent service's settings: the platform's, plus its own from MOSAIC_CONSENT_*."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consent_service import purposes as purposes_module
from consent_service.events import parse_categories
from consent_service.purposes import Purpose
from mosaic.platform import topics
from mosaic.platform.config import Env, ServiceSettings

# The services with a privacy participant (mosaic.platform.privacy.Participant), as registered.
DEFAULT_PARTICIPANTS = tuple(sorted(topics.PARTICIPANTS))


@dataclass(frozen=True)
class Settings(ServiceSettings):
    SERVICE = "consent"
    purposes: dict[str, Purpose] = field(
        default_factory=lambda: purposes_module.parse(purposes_module.DEFAULT_PURPOSES)
    )
    jurisdiction: int = purposes_module.JURISDICTIONS["gdpr"]
    cache_size: int = 100_000
    cache_seconds: float = 60.0
    categories: dict[str, str] = field(default_factory=dict)
    identity_address: str = ""
    participants: tuple[str, ...] = DEFAULT_PARTICIPANTS
    export_days: float = 30.0

    @classmethod
    def own(cls, env: Env) -> dict[str, Any]:
        purposes = purposes_module.parse(env.str("MOSAIC_CONSENT_PURPOSES", purposes_module.DEFAULT_PURPOSES))
        return dict(
            purposes=purposes,
            # The law assumed for a person whose jurisdiction no caller or decision named:
            # GDPR's opt-in is the safe side.
            jurisdiction=purposes_module.JURISDICTIONS[
                env.choice("MOSAIC_CONSENT_JURISDICTION", "gdpr", tuple(purposes_module.JURISDICTIONS))
            ],
            cache_size=env.int("MOSAIC_CONSENT_CACHE_SIZE", 100_000, minimum=1),
            # The longest a cached answer is trusted when a consent.changed notice was missed.
            cache_seconds=env.float("MOSAIC_CONSENT_CACHE_SECONDS", 60.0),
            # Segment consent categories (OneTrust ids such as C0004, or names) and their purposes.
            categories=parse_categories(env.environ.get("MOSAIC_CONSENT_CATEGORIES", ""), purposes),
            # Where identifiers of privacy requests are resolved; unset: requests name profile ids.
            identity_address=env.environ.get("MOSAIC_IDENTITY_ADDRESS", "").strip(),
            # The services that must answer a privacy request before it completes.
            participants=env.list("MOSAIC_PRIVACY_PARTICIPANTS", ",".join(DEFAULT_PARTICIPANTS)),
            # How long a completed export's document is kept for the requester to fetch.
            export_days=env.float("MOSAIC_PRIVACY_EXPORT_DAYS", 30.0, minimum=0.01),
        )
