"""deploy/local/nats.sh against a real nats-server: a reused pid is not the server, and stop
stops it for sure (TERM, then KILL after the deadline) before it drops the pid file."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def script(tmp_path: Path):
    """nats.sh in a repository of its own, so its .local/ is this test's."""
    local = tmp_path / "deploy/local"
    local.mkdir(parents=True)
    for name in ("nats.sh", "prereqs.sh"):
        shutil.copy(REPO / "deploy/local" / name, local / name)
    env = {
        **os.environ,
        "NATS_PORT": str(_free_port()),
        "NATS_MONITOR_PORT": str(_free_port()),
        "NATS_STOP_SECONDS": "1",
    }

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(local / "nats.sh"), command], env=env, capture_output=True, text=True, timeout=60)

    yield run, tmp_path / ".local/nats/nats.pid"
    run("stop")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_a_pid_reused_by_another_program_is_not_taken_for_the_server(script) -> None:
    run, pidfile = script
    assert run("start").returncode == 0
    server = int(pidfile.read_text())
    other = subprocess.Popen(["sleep", "60"])
    try:
        pidfile.write_text(str(other.pid))
        status = run("status")
        assert status.returncode == 1 and "not running" in status.stdout
        assert run("stop").returncode == 0
        assert other.poll() is None, "stop must not signal a program that merely has the old pid"
    finally:
        other.kill()
        os.kill(server, signal.SIGKILL)


def test_stop_kills_a_server_that_ignores_term_and_only_then_drops_the_pid_file(script) -> None:
    run, pidfile = script
    assert run("start").returncode == 0
    server = int(pidfile.read_text())
    os.kill(server, signal.SIGSTOP)  # a stopped process cannot act on TERM
    stopped = run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "sending KILL" in stopped.stderr
    deadline = time.monotonic() + 5
    while not _gone(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(server)
    assert not pidfile.exists()
    assert run("status").returncode == 1
