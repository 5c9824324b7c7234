"""The whole mesh on one machine: the six services as separate processes.

Each service logs one JSON line `"message": "serving"` with its gRPC port once it serves; the
mesh waits for it, so port 0 (any free port) works as well as fixed ports. Services listen on
127.0.0.1 unless MOSAIC_BIND_HOST says otherwise. `supervise` restarts a child that died and
says so; one that dies MAX_RESTARTS times within RESTART_WINDOW seconds stops the mesh.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Identity before consent (which resolves privacy requests' identifiers through it), consent
# before delivery (which asks it for consent).
# Identity first: ingestion and consent are given its address.
SERVICES = ("identity", "ingestion", "consent", "profile", "segmentation", "delivery")
# What `start` starts side by side: each wave needs only the addresses of earlier ones
# (ingestion and consent identity's, segmentation profile's, delivery consent's, profile's and
# for feedback ingestion's and identity's). Three waves instead of six starts in a row: on two
# cores the mesh is up in about half the time, since a service's start is mostly its imports.
WAVES = (("identity", "profile"), ("ingestion", "consent", "segmentation"), ("delivery",))
HTTP_PORT = 8080  # ingestion's Segment-compatible HTTP API
DELIVERY_HTTP_PORT = 8081  # delivery's signed engagement endpoint, when its secret is set
LOOPBACK = "127.0.0.1"
MAX_RESTARTS = 3
RESTART_WINDOW = 60.0
DEFAULT_PORTS = {
    "ingestion": 50051,
    "identity": 50052,
    "profile": 50053,
    "segmentation": 50054,
    "consent": 50055,
    "delivery": 50056,
}
# With fixed ports each service also serves Prometheus metrics (deploy/local/prometheus.sh scrapes these).
METRICS_PORTS = {
    "ingestion": 9461,
    "identity": 9462,
    "profile": 9463,
    "segmentation": 9464,
    "consent": 9465,
    "delivery": 9466,
}


class MeshError(RuntimeError):
    pass


class Mesh:
    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        fixed_ports: bool = False,
        service_env: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        self.env = env
        self.service_env = service_env  # variables of one service (its certificate, its token)
        self.log_dir = log_dir
        self.fixed_ports = fixed_ports
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.http_ports: dict[str, int] = {}  # services that also serve HTTP (ingestion)
        self.restarts: dict[str, list[float]] = {}  # when each service was restarted, recent first

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def start(self, timeout: float = 90.0) -> Mesh:
        for wave in WAVES:
            spawned = [(name, self._spawn(name)) for name in wave]
            for name, (log_path, offset) in spawned:
                self.ports[name] = self._wait_serving(name, log_path, offset, timeout)
        return self

    def start_service(self, name: str, timeout: float = 90.0) -> None:
        log_path, offset = self._spawn(name)
        self.ports[name] = self._wait_serving(name, log_path, offset, timeout)

    def _spawn(self, name: str) -> tuple[Path, int]:
        """Start the service's process; returns its log and where this start's lines begin."""
        own = self.service_env(name) if self.service_env else {}
        env = {
            "MOSAIC_BIND_HOST": LOOPBACK,
            **os.environ,
            **self.env,
            **own,
            "OTEL_SERVICE_NAME": name,
            "MOSAIC_GRPC_PORT": str(DEFAULT_PORTS[name] if self.fixed_ports else 0),
            "MOSAIC_HTTP_PORT": str(HTTP_PORT if self.fixed_ports else 0),
        }
        if self.fixed_ports:
            env["MOSAIC_METRICS_PORT"] = str(METRICS_PORTS[name])
        if name == "delivery":
            env.setdefault("MOSAIC_CONSENT_ADDRESS", self.address("consent"))
            env.setdefault("MOSAIC_PROFILE_ADDRESS", self.address("profile"))
            if "segmentation" in self.ports:  # campaigns' members
                env.setdefault("MOSAIC_SEGMENTATION_ADDRESS", self.address("segmentation"))
            # The local mesh's receivers (the demo's webhook, the tests') listen on loopback.
            env.setdefault("MOSAIC_DELIVERY_ALLOW_ADDRESSES", "loopback")
            if env.get("MOSAIC_DELIVERY_FEEDBACK") == "true":
                # Outcomes and engagement back through ingestion (an opt-in: each outcome then
                # becomes an event and a new profile version).
                env.setdefault("MOSAIC_INGESTION_ADDRESS", self.address("ingestion"))
                env.setdefault("MOSAIC_IDENTITY_ADDRESS", self.address("identity"))
                env.setdefault("MOSAIC_DELIVERY_HTTP_PORT", str(DELIVERY_HTTP_PORT if self.fixed_ports else 0))
        # Privacy requests by identifier; the ids of a person whose consent changed.
        if name in ("consent", "ingestion") and "identity" in self.ports:
            env.setdefault("MOSAIC_IDENTITY_ADDRESS", self.address("identity"))
        if name == "segmentation":
            env.setdefault("MOSAIC_PROFILE_ADDRESS", self.address("profile"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("ab")
        offset = log_path.stat().st_size
        self.processes[name] = subprocess.Popen(
            # No preexec_fn, so Python spawns with vfork: a fork of this process (which may run
            # gRPC) would restart gRPC's poller in the child, which can abort on the descriptors
            # that close before exec. The service unblocks the signals `mosaic run` blocked.
            [sys.executable, "-m", f"{name}_service"],
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        return log_path, offset

    def _wait_serving(self, name: str, log_path: Path, offset: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with log_path.open("rb") as log:
                log.seek(offset)
                for line in log:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if entry.get("message") == "http serving":
                        self.http_ports[name] = int(entry["http_port"])
                    if entry.get("message") == "serving":
                        return int(entry["grpc_port"])
            if self.processes[name].poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise MeshError(f"{name} exited with {self.processes[name].returncode}:\n{tail}")
            time.sleep(0.05)
        raise MeshError(f"{name} did not serve within {timeout}s; see {log_path}")

    def supervise(self, report: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> list[str]:
        """Restart every service that exited since the last look, reporting each; returns
        their names. MeshError when one exited MAX_RESTARTS times within RESTART_WINDOW s."""
        restarted = []
        for name in SERVICES:
            process = self.processes.get(name)
            if process is None or process.poll() is None:
                continue
            now = time.monotonic()
            recent = [at for at in self.restarts.get(name, []) if now - at < RESTART_WINDOW]
            log_path = self.log_dir / f"{name}.log"
            if len(recent) >= MAX_RESTARTS:
                raise MeshError(
                    f"{name} exited with {process.returncode} {len(recent) + 1} times within "
                    f"{RESTART_WINDOW:g} s; stopping the mesh (see {log_path})"
                )
            report(f"{name} exited with {process.returncode}; restarting it (see {log_path})")
            self.restarts[name] = [*recent, now]
            self.start_service(name)
            report(f"{name} is serving again on {self.address(name)}")
            restarted.append(name)
        return restarted

    def stop_service(self, name: str, timeout: float = 30.0) -> int:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return process.returncode if process else 0
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def stop(self) -> None:
        for name in reversed(SERVICES):
            self.stop_service(name)
