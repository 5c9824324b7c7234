"""What the benchmarks share about the processes they measure: a service started as a deployment
runs it (a process of its own), waiting for it to serve, and a process's CPU time."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TICK = os.sysconf("SC_CLK_TCK")


def _ticks(stat: str) -> int:
    """User and system time of a /proc stat line, in clock ticks."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user and system), from /proc."""
    return _ticks(Path(f"/proc/{pid}/stat").read_text()) / TICK


def thread_cpu_seconds(pid: int, name: str) -> float:
    """The CPU time so far of a process's threads whose name starts with `name` (a JVM's
    "C2 CompilerThread0", say), from /proc."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")].startswith(name):
            total += _ticks(stat)
    return total / TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(module: str, env: dict[str, str], log_path: str) -> tuple[subprocess.Popen, int]:
    """`python -m <module>` with the bench's environment plus `env`, on a free gRPC port, with
    authentication off and its output in `log_path`; the process and its port."""
    port = free_port()
    environ = {**os.environ, "MOSAIC_AUTH": "off", "MOSAIC_GRPC_PORT": str(port), **env}
    with open(log_path, "w") as log:  # the child keeps its own copy
        return subprocess.Popen([sys.executable, "-m", module], env=environ, stdout=log, stderr=log), port


async def wait_serving(channel: grpc.aio.Channel, process: subprocess.Popen, name: str) -> None:
    """Until the service answers SERVING on the gRPC health protocol (60 s, or it exits)."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the {name} service did not start (see its log)")
