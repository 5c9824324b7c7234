"""The nats_server fixture on a machine without nats-server: one message, then the run stops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = """
def test_one(nats_server):
    pass

def test_two(nats_server):
    pass
"""


def test_a_missing_nats_server_stops_the_run_once_naming_the_install_command(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["mosaic.testing.plugin"]\n')
    (tmp_path / "test_needs_nats.py").write_text(TESTS)
    # Only the venv's own bin on the PATH: python and pytest, and no nats-server.
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 4, output
    assert output.count("nats-server is not on the PATH; install it with: deploy/local/nats.sh install") == 1, output
    assert "error" not in output.lower().replace("usage_error", ""), output
