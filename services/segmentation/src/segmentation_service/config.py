from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mosaic.platform.config import ConfigError, Env, ServiceSettings
from mosaic.platform.consent import Policy
from segmentation_service.rfm import DEFAULT_TRAITS, RfmTraits

TRAIT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # as the profile service names computed traits


@dataclass(frozen=True)
class Settings(ServiceSettings):
    SERVICE = "segmentation"
    # Where the profile service is: the view is rebuilt from its ScanProfiles on start. Empty
    # (tests of the handlers alone) starts with an empty view filled by profile.updated only.
    profile_address: str
    # How often due timers are looked for; they fire within this (plus the work) of their time.
    timer_interval: float
    # The other replicas (host:port), whose views Estimate adds to this one's.
    peers: tuple[str, ...] = ()
    # How often each replica counts its segments' sizes (GetSegmentSizes keeps the day's last).
    size_interval: float = 3600.0
    # The deployment's consent purposes and their defaults (segments tied to a purpose).
    policy: Policy = field(default_factory=Policy)
    # How often the RFM edges are recomputed over every replica's customers.
    rfm_interval: float = 3600.0
    # The computed traits RFM reads: the last order's time, the orders, their value.
    rfm_traits: RfmTraits = DEFAULT_TRAITS

    @classmethod
    def own(cls, env: Env) -> dict[str, Any]:
        return dict(
            profile_address=env.str("MOSAIC_PROFILE_ADDRESS", ""),
            timer_interval=env.float("MOSAIC_SEGMENTATION_TIMER_SECONDS", 10.0, minimum=0.1),
            peers=env.list("MOSAIC_SEGMENTATION_PEERS", "") if env.str("MOSAIC_SEGMENTATION_PEERS", "") else (),
            size_interval=env.float("MOSAIC_SEGMENTATION_SIZE_SECONDS", 3600.0, minimum=0.1),
            policy=Policy.from_env(env.environ),
            rfm_interval=env.float("MOSAIC_SEGMENTATION_RFM_SECONDS", 3600.0, minimum=0.1),
            rfm_traits=RfmTraits(
                _trait(env, "MOSAIC_SEGMENTATION_RFM_RECENCY_TRAIT", RfmTraits.recency),
                _trait(env, "MOSAIC_SEGMENTATION_RFM_FREQUENCY_TRAIT", RfmTraits.frequency),
                _trait(env, "MOSAIC_SEGMENTATION_RFM_MONETARY_TRAIT", RfmTraits.monetary),
            ),
        )


def _trait(env: Env, name: str, default: str) -> str:
    value = env.str(name, default)
    if not TRAIT_NAME.match(value):
        raise ConfigError(name, f"must be a computed trait's name (lower-case letters, digits, _), got {value!r}")
    return value
