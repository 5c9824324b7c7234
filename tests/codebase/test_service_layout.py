"""Every service has the same shape: the same module names for the same parts, and settings
built the same way on the platform's (mosaic.platform.config.ServiceSettings)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest

from mosaic.platform import topics
from mosaic.platform.config import PlatformSettings, ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "src").is_dir())
# The part each module holds, the same in every service.
PARTS = {
    "__main__": "runs the service: server.main(Settings.from_env, build)",
    "config": "Settings, a ServiceSettings",
    "app": "build(runtime, settings): wires the parts together",
    "server": "the servicers of the service's gRPC API",
    "store": "the repository interface and open_store",
}
# Not required of every service: privacy (its part in privacy requests, for the participants)
# and events (consumers of the bus that are no domain module of their own).


def _has_module(package: Path, name: str) -> bool:
    return (package / f"{name}.py").exists() or (package / name / "__init__.py").exists()


def test_every_service_is_found() -> None:
    assert SERVICES == sorted(topics.SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_has_the_same_modules_for_the_same_parts(service: str) -> None:
    package = ROOT / "services" / service / "src" / f"{service}_service"
    missing = [name for name in PARTS if not _has_module(package, name)]
    if service in topics.PARTICIPANTS and not _has_module(package, "privacy"):
        missing.append("privacy")  # its part in privacy requests
    assert missing == []
    app = importlib.import_module(f"{service}_service.app")
    assert inspect.iscoroutinefunction(app.build)
    server = importlib.import_module(f"{service}_service.server")
    assert [name for name in vars(server) if name.endswith("Servicer") and inspect.isclass(vars(server)[name])]
    # Only the wiring: servicers live in server, consumers in events or their domain module.
    defined = [v for v in vars(app).values() if inspect.isclass(v) and v.__module__ == app.__name__]
    assert [c.__name__ for c in defined if not dataclasses.is_dataclass(c)] == []
    assert inspect.iscoroutinefunction(importlib.import_module(f"{service}_service.store").open_store)
    main = (package / "__main__.py").read_text()
    assert "server.main(Settings.from_env, build)" in main


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
