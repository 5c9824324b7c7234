"""A real nats-server with JetStream, on a port the OS picks, for one test or one session."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

INSTALL_HINT = "deploy/local/nats.sh install (or: apt-get install nats-server)"


class NatsServerMissing(RuntimeError):
    """nats-server is not on the PATH."""

    def __init__(self) -> None:
        super().__init__(f"nats-server is not on the PATH; install it with: {INSTALL_HINT}")


def find_binary() -> str:
    """The nats-server on the PATH (the Debian package puts it in /usr/bin)."""
    binary = shutil.which("nats-server")
    if binary is None:
        raise NatsServerMissing()
    return binary


class NatsServer:
    """Starts `nats-server -js` on loopback; restartable on the same port and store.

    `cores` caps the Go scheduler (GOMAXPROCS), as a container's CPU limit would: otherwise
    the Go collector's idle workers take every core of the machine for ~100 ms each cycle,
    stalling whatever else runs beside the server.
    """

    def __init__(self, binary: str | None = None, cores: int | None = None, args: tuple[str, ...] = ()) -> None:
        self.binary = binary or find_binary()
        self.args = args  # more flags, e.g. TLS
        self.env = {**os.environ, "GOMAXPROCS": str(cores)} if cores else None
        self.dir = Path(tempfile.mkdtemp(prefix="mosaic-nats-"))
        self.port = -1  # nats-server picks a free one on first start; kept across restarts
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        ports_dir = self.dir / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir()
        self.process = subprocess.Popen(
            [
                self.binary,
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.dir / "store"),
                "--ports_file_dir",
                str(ports_dir),
                "-l",
                str(self.dir / "nats.log"),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.env,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            files = list(ports_dir.glob("*.ports"))
            if files:
                try:
                    ports = json.loads(files[0].read_text())
                except ValueError:  # created, not yet written: read it again
                    ports = None
                if ports:
                    self.port = int(ports["nats"][0].rsplit(":", 1)[1])
                    return self
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"nats-server did not start; see {self.dir / 'nats.log'}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)
        self.process = None

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if os.environ.get("MOSAIC_KEEP_TEST_DATA") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)
