"""The local mesh with real service processes: loopback by default, and supervised."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mosaic.cli import mesh as mesh_module
from mosaic.cli.mesh import Mesh, MeshError


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (hex as /proc/net/tcp* writes them)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, as IPv4 or IPv4-mapped IPv6


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def mesh(nats_server, tmp_path):
    mesh = Mesh(
        {
            "MOSAIC_AUTH": "off",
            "MOSAIC_NATS_URL": nats_server.url,
            "MOSAIC_DATA_DIR": str(tmp_path / "data"),
            "OTEL_TRACES_EXPORTER": "none",
        },
        tmp_path / "logs",
    )
    yield mesh
    mesh.stop()


def test_a_service_of_the_mesh_listens_on_loopback_only(mesh):
    mesh.start_service("ingestion")
    for port in (mesh.ports["ingestion"], mesh.http_ports["ingestion"]):  # gRPC and HTTP
        assert listening_addresses(port) and listening_addresses(port) <= LOOPBACK


def test_a_service_that_dies_is_reported_and_restarted_and_one_that_keeps_dying_stops_the_mesh(mesh, monkeypatch):
    monkeypatch.setattr(mesh_module, "MAX_RESTARTS", 1)
    mesh.start_service("consent")
    assert mesh.supervise() == []  # all alive: nothing to do
    first = mesh.processes["consent"]
    first.send_signal(signal.SIGKILL)
    first.wait()
    reports: list[str] = []
    assert mesh.supervise(reports.append) == ["consent"]
    assert reports[0].startswith("consent exited with -9; restarting it")
    assert mesh.processes["consent"].pid != first.pid and serving(mesh.address("consent"))
    mesh.processes["consent"].send_signal(signal.SIGKILL)
    mesh.processes["consent"].wait()
    with pytest.raises(MeshError, match="consent exited with -9 2 times within 60 s; stopping the mesh"):
        mesh.supervise(reports.append)


def test_the_waves_start_every_service_once_each_after_those_it_needs():
    order = [name for wave in mesh_module.WAVES for name in wave]
    assert sorted(order) == sorted(mesh_module.SERVICES)
    wave_of = {name: index for index, wave in enumerate(mesh_module.WAVES) for name in wave}
    needs = {"consent": ["identity"], "segmentation": ["profile"], "delivery": ["consent", "profile", "ingestion"]}
    for service, needed in needs.items():
        assert all(wave_of[n] < wave_of[service] for n in needed), service
