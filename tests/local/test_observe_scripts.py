"""The local observability scripts agree with the mesh: Prometheus scrapes the very ports
`mosaic run` gives the services' metrics, and writes a configuration promtool accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mosaic.cli.mesh import METRICS_PORTS, SERVICES

REPO = Path(__file__).resolve().parents[2]


def test_prometheus_scrapes_every_service_on_the_port_the_mesh_gives_it():
    script = (REPO / "deploy/local/prometheus.sh").read_text()
    (targets,) = re.findall(r'^targets="([^"]*)"', script, re.M)
    scraped = {name: int(port) for name, port in (t.split(":") for t in targets.split())}
    assert scraped == METRICS_PORTS and set(scraped) == set(SERVICES)


def test_the_written_configuration_is_valid(tmp_path):
    if not shutil.which("promtool"):
        pytest.fail("promtool is missing: deploy/local/prometheus.sh install (the Debian prometheus package)")
    local = tmp_path / "deploy/local"
    local.mkdir(parents=True)
    shutil.copy(REPO / "deploy/local/prometheus.sh", local)
    subprocess.run([str(local / "prometheus.sh"), "config"], check=True, capture_output=True, timeout=30)
    written = tmp_path / ".local/prometheus/prometheus.yml"
    result = subprocess.run(["promtool", "check", "config", str(written)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "job_name: delivery" in written.read_text()
