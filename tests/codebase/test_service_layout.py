"""Every service has the same shape: settings built the same way on the platform's
(mosaic.platform.config.ServiceSettings)."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from mosaic.platform import topics
from mosaic.platform.config import PlatformSettings, ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "src").is_dir())


def test_every_service_is_found() -> None:
    assert SERVICES == sorted(topics.SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_a_services_settings_are_the_platforms_plus_its_own_read_the_same_way(service: str) -> None:
    settings = importlib.import_module(f"{service}_service.config").Settings
    assert issubclass(settings, ServiceSettings) and settings.SERVICE == service
    assert "from_env" not in vars(settings), "reads its own fields in own(env); from_env is the platform's"
    assert dataclasses.fields(settings)[0].name == "platform"
    environ = {"MOSAIC_AUTH": "off", "MOSAIC_CONSENT_ADDRESS": "127.0.0.1:1"}
    built = settings.from_env(environ)
    assert built.platform.service == service
    given = PlatformSettings.from_env(service, environ)
    assert settings.from_env(environ, given).platform is given
