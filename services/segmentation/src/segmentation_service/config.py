from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mosaic.platform.config import PlatformSettings


@dataclass(frozen=True)
class Settings:
    platform: PlatformSettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        return cls(platform=PlatformSettings.from_env("segmentation", environ))
