"""Who may import whom: test helpers (mosaic.testing) are never imported by runtime code, a
library never imports a service, and a service never imports another service."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LIBS = ("mosaic-platform", "mosaic-cli", "mosaic-proto")
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "src").is_dir())


def imported(src: Path) -> dict[str, set[str]]:
    """Every module imported anywhere under `src`, with the files (relative to `src`) that import it."""
    found: dict[str, set[str]] = {}
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            for name in names:
                found.setdefault(name, set()).add(str(path.relative_to(src)))
    return found


def offending(src: Path, forbidden: tuple[str, ...]) -> dict[str, set[str]]:
    return {
        name: files
        for name, files in imported(src).items()
        if any(name == f or name.startswith(f"{f}.") for f in forbidden)
    }


def runtime_sources() -> list[Path]:
    return [ROOT / "libs" / lib / "src" for lib in RUNTIME_LIBS] + [ROOT / "services" / s / "src" for s in SERVICES]


@pytest.mark.parametrize("src", runtime_sources(), ids=lambda p: p.parent.name)
def test_runtime_code_never_imports_the_test_helpers(src: Path) -> None:
    assert offending(src, ("mosaic.testing",)) == {}
    project = tomllib.loads((src.parent / "pyproject.toml").read_text())["project"]
    assert not [d for d in project.get("dependencies", []) if d.startswith("mosaic-testing")]


@pytest.mark.parametrize("lib", [*RUNTIME_LIBS, "mosaic-testing"])
def test_a_library_never_imports_a_service(lib: str) -> None:
    assert offending(ROOT / "libs" / lib / "src", tuple(f"{s}_service" for s in SERVICES)) == {}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_never_imports_another_service(service: str) -> None:
    others = tuple(f"{s}_service" for s in SERVICES if s != service)
    assert offending(ROOT / "services" / service / "src", others) == {}


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    (tmp_path / "module.py").write_text("def f():\n    from mosaic.testing.receivers import WebhookReceiver\n")
    assert offending(tmp_path, ("mosaic.testing",)) == {
        "mosaic.testing.receivers": {"module.py"},
        "mosaic.testing.receivers.WebhookReceiver": {"module.py"},
    }


@pytest.mark.parametrize("service", SERVICES)
def test_only_the_store_package_picks_a_backend(service: str) -> None:
    """A store's backends import its contract (base, model), never the other way round, not even
    lazily: only the package's __init__ imports a backend, so the store has no import cycle."""
    backends = tuple(f"{service}_service.store.{backend}" for backend in ("cassandra", "sqlite"))
    importers = set().union(*offending(ROOT / "services" / service / "src", backends).values())
    assert importers == {f"{service}_service/store/__init__.py"}
